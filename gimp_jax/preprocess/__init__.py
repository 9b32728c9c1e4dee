"""Raw whole-slide images -> CLAM-layout patch features (`python -m gimp_jax.preprocess`)."""
