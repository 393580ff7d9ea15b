"""Benchmarks of the service (`make bench`, `python -m bench`); never part of `make test`. See bench/README.md."""
