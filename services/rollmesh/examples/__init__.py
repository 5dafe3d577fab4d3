"""Built-in example environments: arithmetic, guess-number and wiki-search."""
