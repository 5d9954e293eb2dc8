"""shed_jax benchmarks: ``python -m bench`` (see bench/runner.py); the older scripts run on their own too."""
