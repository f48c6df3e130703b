"""Writers of small synthetic trees in each dataset's original download layout (test fixtures).

One module per family of layouts; each ``make_<dataset>(root) -> dict`` writes the tree under
``root`` and returns the counts the adapter must find."""
