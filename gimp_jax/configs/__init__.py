"""Configs, installed with the package: `nsclc.py` (GiMP: the paper's settings, `published`, plus
the recipe chosen on validation, `RECIPE`, in `get_config`) and `methods/<name>.py` (the methods of
Tables 1 and 2 and the later peers), each `get_config(arg="paper")` with the size in `arg`
(sizes.py).

From a checkout the repository-root `configs` is a link to this folder:
`python -m gimp_jax.main --config=configs/nsclc.py:cpu`; from Python,
`from gimp_jax.configs import nsclc; nsclc.get_config("cpu")`.
"""
