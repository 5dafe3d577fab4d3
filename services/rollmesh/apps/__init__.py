"""Applications: what a person runs (eval, train, export, the local launcher, demo, benchmarks,
conformance). They compose the layers below; nothing below imports them."""
