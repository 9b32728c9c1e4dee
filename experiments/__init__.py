"""Scripts that run the library (tables, sweeps, benchmarks): `python -m experiments.<name>`."""
