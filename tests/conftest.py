"""Shared test settings: CPU only, and a persistent XLA compilation cache shared by the test
processes (the CLI tests start subprocesses that compile the same steps)."""

import os
import tempfile

_CACHE = os.path.join(tempfile.gettempdir(), "gimp_jax_test_xla_cache")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
