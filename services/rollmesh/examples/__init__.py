"""Built-in example environments: arithmetic, guess-number, wiki-search, digits and chain-arithmetic
(an external agent program, played through RunEpisode)."""
