"""Shared test configuration: strict rank promotion, locations of shared real data."""
import hashlib
import os
import re
from pathlib import Path

import numpy as np

import jax
import pytest

# Strict rank promotion catches silent broadcasting bugs (STYLE.md, equinox).
jax.config.update("jax_numpy_rank_promotion", "raise")

# The estimate a real run logs when it starts (shed_jax/run/estimate.py) times k-means and the Shapley engine:
# seconds per run. Tests of the pipeline do without it; tests/test_estimate.py turns it on where it is tested.
os.environ.setdefault("SHED_ESTIMATE", "0")
# The CLI turns on JAX's persistent compilation cache (shed_jax/_compile_cache.py); in-process CLI tests would turn it
# on for the whole test session. Off here; tests/test_compile_cache.py runs the CLI in subprocesses with it on.
os.environ.setdefault("SHED_COMPILE_CACHE", "0")


@pytest.fixture(scope="session", autouse=True)
def _private_embedding_cache(tmp_path_factory):
    """One embedding cache for the whole test session, never the user's (~/.cache/shed_jax)."""
    previous = os.environ.get("SHED_CACHE")
    os.environ["SHED_CACHE"] = str(tmp_path_factory.mktemp("shed_cache"))
    yield
    if previous is None:
        os.environ.pop("SHED_CACHE", None)
    else:
        os.environ["SHED_CACHE"] = previous


_DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_DATA = Path(os.environ.get("SHED_SHARED_DATA", _DEFAULT_SHARED))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the real public data in ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def hashing_embed(texts, *, dim=128, **_):
    """Signed hashing bag-of-words embedding, (N, dim) float32 with unit rows: similar wording, similar vector.

    A fast stand-in for the sentence encoder in tests about orchestration rather than embeddings.
    """
    out = np.zeros((len(texts), dim), np.float64)
    for row, text in enumerate(texts):
        for token in re.findall(r"[a-z0-9]+", text.lower()):
            digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
            out[row, int.from_bytes(digest[:4], "little") % dim] += 1.0 if digest[4] & 1 else -1.0
        out[row, dim - 1] += 0.5  # no all-zero rows (e.g. the empty text)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def fake_embed(monkeypatch):
    """Replace shed_jax.embed.embed_texts (used by the pipeline and proxies.embed_validation); count calls."""
    from shed_jax import embed as embed_module

    calls = []

    def fake(texts, **kwargs):
        calls.append(len(texts))
        return hashing_embed(list(texts))

    monkeypatch.setattr(embed_module, "embed_texts", fake)
    return calls
