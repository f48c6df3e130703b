"""zsbench tests."""
