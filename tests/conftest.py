"""Shared test configuration: strict rank promotion, locations of shared real data."""
import os
from pathlib import Path

import jax
import pytest

# Strict rank promotion catches silent broadcasting bugs (STYLE.md, equinox).
jax.config.update("jax_numpy_rank_promotion", "raise")

_DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_DATA = Path(os.environ.get("SHED_SHARED_DATA", _DEFAULT_SHARED))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the real public data in ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
