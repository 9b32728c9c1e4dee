"""gimp_jax: Gene-induced Multimodal Pre-training (GiMP) for image-omic classification in JAX/Flax."""

__version__ = "0.1.0"
