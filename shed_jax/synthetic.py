"""Moved to :mod:`shed_jax.demo.synthetic` (generated demo data lives outside the library core); this name
stays importable."""
from shed_jax.demo.synthetic import *  # noqa: F401,F403
from shed_jax.demo.synthetic import __all__  # noqa: F401
