"""``python -m zsbench`` (and ``torchrun -m zsbench``) runs the command line."""

from zsbench.cli import main

if __name__ == "__main__":
    main()
