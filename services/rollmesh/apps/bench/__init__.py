"""Benchmarks behind `rollmesh bench ...`; each measures a reference side by side in one run."""
