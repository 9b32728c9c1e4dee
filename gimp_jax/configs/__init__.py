"""Configs, installed with the package: `nsclc.py` (the paper) and `methods/<name>.py` (the methods
of Tables 1 and 2), each `get_config(arg="paper")` with the size in `arg` (sizes.py).

From a checkout the repository-root `configs` is a link to this folder:
`python -m gimp_jax.main --config=configs/nsclc.py:cpu`; from Python,
`from gimp_jax.configs import nsclc; nsclc.get_config("cpu")`.
"""
