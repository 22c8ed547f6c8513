"""Benchmarks (run as modules, e.g. `python -m bench.placement`); never part of `make test`."""
