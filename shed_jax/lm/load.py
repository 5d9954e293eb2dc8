"""Load a causal LM into :class:`shed_jax.lm.model.Decoder`: local HF directory, hub name, or GGUF.

Only data formats are read, never code or pickles: ``config.json`` + safetensors (single file or a
sharded ``model.safetensors.index.json``) through the ``safetensors`` package, or a ``.gguf`` file
through the ``gguf`` package. No ``torch.load``, no ``trust_remote_code``.

A hub name is resolved with ``huggingface_hub.snapshot_download`` restricted to the config,
safetensors and tokenizer files; with ``HF_HUB_OFFLINE=1`` (or no network) it is looked up in the
local Hugging Face cache only, and a name that is not there raises :class:`ModelNotFoundError`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shed_jax.errors import UserError
from shed_jax.lm.model import Decoder, DecoderConfig

HUB_ALLOW_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class ModelNotFoundError(UserError):
    """A model name or path that resolves to nothing loadable (a user error, not a bug)."""


# ------------------------------------------------------------------------------------ the model


class LanguageModel:
    """A loaded causal LM: tokenizer, config and Flax decoder.

    Attributes:
      tokenizer: the transformers tokenizer, or None when the checkpoint ships none.
      config: the :class:`DecoderConfig`.
      model: the :class:`Decoder` (``nnx.split`` it for functional use).
      source: where the weights came from (a directory or a .gguf path).
    """

    def __init__(self, *, model: Decoder, tokenizer: Any, source: str):
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        self.source = source

    def logits(self, input_ids) -> jax.Array:
        """Causal next-token logits, float32 ``(B, T, vocab)``, of unpadded int32 ``(B, T)`` ids (jitted)."""
        graphdef, state = nnx.split(self.model)
        return _logits(graphdef, state, jnp.asarray(input_ids, jnp.int32))

    def __repr__(self) -> str:
        return f"LanguageModel(source={self.source!r}, config={self.config})"


@jax.jit
def _logits(graphdef, state, input_ids):
    # graphdef is a pytree without leaves, so jit keys its cache on it (no retrace per call).
    model = nnx.merge(graphdef, state)
    return model.unembed(model(input_ids))


def decoder_from_weights(config: DecoderConfig, weights: dict, *, dtype=jnp.bfloat16,
                         param_dtype=jnp.bfloat16, attention_impl: str | None = None) -> Decoder:
    """A :class:`Decoder` holding ``weights`` (numpy or jax arrays in the stacked layout).

    ``weights`` = ``{"embed_tokens": (V, H), "blocks": {name: (L, ...)}, "norm": (H,),
    ["lm_head": (H, V)]}``; every parameter of the module must be present with its exact shape.
    The module is first built abstractly (``nnx.eval_shape``), so no random weights are materialised.
    """
    abstract = nnx.eval_shape(
        lambda: Decoder(config, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                        rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)
    expected = nnx.to_pure_dict(state)
    flat_expected = dict(_flatten(expected))
    flat_given = dict(_flatten(weights))
    missing = sorted(set(flat_expected) - set(flat_given))
    extra = sorted(set(flat_given) - set(flat_expected))
    if missing or extra:
        raise ValueError(f"weights do not match the config: missing {missing}, unexpected {extra}")
    values = {}
    for key, spec in flat_expected.items():
        array = flat_given[key]
        if tuple(array.shape) != tuple(spec.shape):
            raise ValueError(f"weight {'.'.join(key)} has shape {tuple(array.shape)}, expected {tuple(spec.shape)}")
        values[key] = jnp.asarray(array, dtype=param_dtype)
    nnx.replace_by_pure_dict(state, _unflatten(values))
    return nnx.merge(graphdef, state)


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _unflatten(flat):
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    return tree


# ------------------------------------------------------------------------------ HF safetensors

_HF_LAYER = {  # suffix after "model.layers.{i}." -> (stacked name, transpose)
    "input_layernorm.weight": ("attn_norm", False),
    "post_attention_layernorm.weight": ("mlp_norm", False),
    "self_attn.q_proj.weight": ("q_proj", True),
    "self_attn.k_proj.weight": ("k_proj", True),
    "self_attn.v_proj.weight": ("v_proj", True),
    "self_attn.o_proj.weight": ("o_proj", True),
    "self_attn.q_proj.bias": ("q_bias", False),
    "self_attn.k_proj.bias": ("k_bias", False),
    "self_attn.v_proj.bias": ("v_bias", False),
    "self_attn.o_proj.bias": ("o_bias", False),
    "mlp.gate_proj.weight": ("gate_proj", True),
    "mlp.up_proj.weight": ("up_proj", True),
    "mlp.down_proj.weight": ("down_proj", True),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_files(directory: Path) -> list[Path]:
    """The safetensors files of an HF checkpoint directory (single file or sharded index)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(directory.glob("*.safetensors"))
    if others:
        return others
    raise ModelNotFoundError(
        f"{directory}: no model.safetensors or model.safetensors.index.json "
        "(only safetensors and GGUF are read; pickled .bin checkpoints are refused)"
    )


def read_hf_weights(directory: Path, config: DecoderConfig) -> dict:
    """float numpy weights of an HF llama/mistral/qwen2 checkpoint, in the stacked layout.

    HF ``nn.Linear`` weights ``(out, in)`` are transposed to ``(in, out)``; per-layer tensors are
    stacked on a leading layer axis. The dtype of the file is kept (bfloat16 via ml_dtypes).
    """
    from safetensors import safe_open

    blocks: dict[str, list] = {}
    top: dict[str, np.ndarray] = {}
    for file in safetensors_files(directory):
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                if name.startswith("model.layers."):
                    layer_str, suffix = name[len("model.layers."):].split(".", 1)
                    if suffix not in _HF_LAYER:
                        raise ValueError(f"unexpected tensor {name} in {file.name}")
                    stacked, transpose = _HF_LAYER[suffix]
                    array = handle.get_tensor(name)
                    slots = blocks.setdefault(stacked, [None] * config.num_layers)
                    slots[int(layer_str)] = array.T if transpose else array
                elif name == "model.embed_tokens.weight":
                    top["embed_tokens"] = handle.get_tensor(name)
                elif name == "model.norm.weight":
                    top["norm"] = handle.get_tensor(name)
                elif name == "lm_head.weight":
                    if not config.tie_word_embeddings:
                        top["lm_head"] = handle.get_tensor(name).T
                else:
                    raise ValueError(f"unexpected tensor {name} in {file.name}")
    stacked = {}
    for name, slots in blocks.items():
        missing = [i for i, a in enumerate(slots) if a is None]
        if missing:
            raise ValueError(f"{directory}: {name} missing for layers {missing}")
        stacked[name] = np.stack(slots)
    return {**top, "blocks": stacked}


def _load_tokenizer(directory: Path):
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


# ------------------------------------------------------------------------------------- the hub


def resolve_hub_name(name: str) -> Path:
    """Local snapshot directory of hub model ``name`` (downloads when online and allowed).

    Raises:
      ModelNotFoundError: offline (``HF_HUB_OFFLINE=1``) and not cached, or not found on the hub.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=list(HUB_ALLOW_PATTERNS)))
    except LocalEntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"model {name!r} is not a local path and is not in the local Hugging Face cache "
            f"({_hf_cache_dir()}); download it first while online, or pass a checkpoint directory "
            "or .gguf file"
        ) from exc
    except (HfHubHTTPError, ValueError, OSError) as exc:
        raise ModelNotFoundError(f"could not resolve model {name!r} on the Hugging Face hub: {exc}") from exc


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"


# -------------------------------------------------------------------------------- entry point


def load(path_or_name: str | os.PathLike, *, dtype="auto", param_dtype=None,
         attention_impl: str | None = None) -> LanguageModel:
    """Load a llama / mistral / qwen2 causal LM.

    Args:
      path_or_name: a local HF checkpoint directory (``config.json`` + safetensors), a ``.gguf``
        file, or a Hugging Face hub name (resolved through the local cache when offline).
      dtype: compute dtype of the decoder: ``"auto"`` (the default: float32 on a CPU, bfloat16 on
        GPUs and TPUs, as the LM proxy does), ``"float32"``, ``"bfloat16"`` or a jnp dtype. With the
        default on a CPU, ``load(path).logits(ids)`` matches transformers' float32 logits to ~1e-6.
      param_dtype: storage dtype of the weights; None (the default) keeps the checkpoint's own dtype
        (the dtype of its embedding matrix; float32 for a GGUF file, whose weights are dequantised).
      attention_impl: None / "xla" (XLA), "cudnn" or "auto" (cuDNN on an NVIDIA GPU in bfloat16, XLA
        otherwise); see :class:`Decoder`.

    Returns:
      a :class:`LanguageModel` (``.tokenizer``, ``.config``, ``.model``, ``.logits(ids)``).

    Raises:
      ModelNotFoundError: nothing loadable at ``path_or_name``.
      ValueError: an unsupported architecture or feature (see ``DecoderConfig.from_hf``).
    """
    dtype = resolve_dtype(dtype)
    param_dtype = None if param_dtype is None else resolve_dtype(param_dtype)
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"{text}: GGUF file not found")
        return _load_gguf(path, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl)
    if path.is_dir():
        directory = path
    elif path.exists():
        raise ModelNotFoundError(f"{text}: expected a checkpoint directory or a .gguf file")
    elif _looks_like_hub_name(text):
        directory = resolve_hub_name(text)
    else:
        raise ModelNotFoundError(f"{text}: no such directory or file, and not a hub name (owner/name)")
    return _load_hf_dir(directory, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl)


def resolve_dtype(dtype, backend: str | None = None):
    """A jnp dtype from ``"auto"`` (float32 on a CPU, bfloat16 on GPUs and TPUs), a dtype name or a dtype.

    >>> resolve_dtype("auto", "cpu"), resolve_dtype("auto", "gpu"), resolve_dtype("bfloat16")
    (dtype('float32'), dtype(bfloat16), dtype(bfloat16))

    Raises:
      ValueError: a name other than auto, float32, bfloat16, float16.
    """
    if isinstance(dtype, str):
        if dtype == "auto":
            dtype = "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype: unknown {dtype!r}, allowed auto, float32, bfloat16, float16")
    return jnp.dtype(dtype)


def _checkpoint_dtype(weights: dict):
    """The storage dtype of a checkpoint: its embedding matrix's (float32 for non-float storage)."""
    embed = weights["embed_tokens"]
    kind = np.dtype(embed.dtype)
    return jnp.dtype(kind) if jnp.issubdtype(kind, jnp.floating) else jnp.dtype(jnp.float32)


def _looks_like_hub_name(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not text.startswith((".", "~"))


def _load_hf_dir(directory: Path, *, dtype, param_dtype, attention_impl) -> LanguageModel:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"{directory}: no config.json")
    safetensors_files(directory)  # refuse pickle-only checkpoints before anything else
    config = DecoderConfig.from_hf(json.loads(config_path.read_text()))
    weights = read_hf_weights(directory, config)
    param_dtype = _checkpoint_dtype(weights) if param_dtype is None else param_dtype
    model = decoder_from_weights(config, weights, dtype=dtype, param_dtype=param_dtype,
                                 attention_impl=attention_impl)
    return LanguageModel(model=model, tokenizer=_load_tokenizer(directory), source=str(directory))


def _load_gguf(path: Path, *, dtype, param_dtype, attention_impl) -> LanguageModel:
    from shed_jax.lm.gguf import gguf_tokenizer, has_tokenizer, read_gguf_with_metadata

    config, weights, metadata = read_gguf_with_metadata(path)
    param_dtype = _checkpoint_dtype(weights) if param_dtype is None else param_dtype
    model = decoder_from_weights(config, weights, dtype=dtype, param_dtype=param_dtype,
                                 attention_impl=attention_impl)
    tokenizer = gguf_tokenizer(path) if has_tokenizer(metadata) else None
    return LanguageModel(model=model, tokenizer=tokenizer, source=str(path))
