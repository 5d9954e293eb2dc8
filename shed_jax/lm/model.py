"""A Llama-family causal decoder in Flax NNX with stacked layers and batched-LoRA hooks.

The architecture is the one shared by Llama / SmolLM2, Mistral and Qwen2 (Touvron et al. 2023,
"LLaMA: Open and Efficient Foundation Language Models"): token embedding, ``num_layers`` pre-norm
blocks (RMSNorm -> grouped-query attention with rotary position embeddings -> residual; RMSNorm ->
SwiGLU MLP -> residual), a final RMSNorm and a tied or separate LM head. Numerics follow the
transformers PyTorch implementation (RMSNorm in float32, RoPE in the ``rotate_half`` convention with
float32 frequencies) so that the logits agree with it to float32 round-off on the same weights.

Layout. The weights of the L blocks are stacked on a leading axis, ``(num_layers, ...)``, and the
blocks run under ``jax.lax.scan``, so the compile time does not grow with L. Projection matrices are
stored ``(d_in, d_out)`` (transposed with respect to ``torch.nn.Linear.weight``)::

    embed_tokens        (vocab, hidden)
    blocks.attn_norm    (L, hidden)           blocks.mlp_norm   (L, hidden)
    blocks.q_proj       (L, hidden, num_heads * head_dim)       [+ q_bias (L, num_heads * head_dim)]
    blocks.k_proj       (L, hidden, num_kv_heads * head_dim)    [+ k_bias]
    blocks.v_proj       (L, hidden, num_kv_heads * head_dim)    [+ v_bias]
    blocks.o_proj       (L, num_heads * head_dim, hidden)       [+ o_bias (L, hidden)]
    blocks.gate_proj    (L, hidden, intermediate)   blocks.up_proj (L, hidden, intermediate)
    blocks.down_proj    (L, intermediate, hidden)
    norm                (hidden,)
    lm_head             (hidden, vocab)       only when the embeddings are not tied

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"). Adapters are a plain
pytree ``{target: {"a": (L, d_in, r), "b": (L, r, d_out)}}`` passed to ``__call__``, never module
state: the frozen base weights are ordinary ``nnx.Param`` and a caller can ``jax.vmap`` the
functional form ``nnx.merge(graphdef, state)(ids, lora=lora)`` over a leading coalition axis of the
adapters with the base state broadcast (``in_axes=None``), and differentiate w.r.t. ``lora`` only.
Each targeted projection adds ``lora_scale * (x @ a) @ b``; the per-layer slices travel through the
scan next to the stacked base weights.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_SUPPORTED_ROPE_TYPES = ("linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a Llama-family decoder (hashable, usable as a static jit argument).

    Attributes:
      vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim:
        the shapes; ``num_heads`` must be a multiple of ``num_kv_heads`` (grouped-query attention).
      rms_norm_eps: epsilon of every RMSNorm.
      rope_theta: base of the rotary frequencies.
      rope_scaling: None, or a sorted tuple of ``(key, value)`` items of the transformers
        ``rope_scaling`` dict; ``rope_type`` "linear" (``factor``) and "llama3" (``factor``,
        ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``) are supported.
      tie_word_embeddings: the LM head is the transposed embedding matrix.
      attention_bias: q/k/v projections have biases (Qwen2; Llama with ``attention_bias``).
      attention_out_bias: the o projection has a bias (Llama with ``attention_bias``; not Qwen2).
      max_position_embeddings: informational (RoPE is computed for any length).
      model_type: "llama", "mistral" or "qwen2".
      sliding_window: None (full causal attention), or W: each query attends to itself and the
        W - 1 previous positions (Mistral's convention), in every layer.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 2048
    model_type: str = "llama"
    attention_out_bias: bool = False
    sliding_window: int | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.rope_scaling is not None:
            scaling = dict(self.rope_scaling)
            if scaling.get("rope_type") not in _SUPPORTED_ROPE_TYPES:
                raise ValueError(
                    f"unsupported rope scaling {scaling.get('rope_type')!r}; "
                    f"supported: {', '.join(_SUPPORTED_ROPE_TYPES)}"
                )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> "DecoderConfig":
        """Build from a transformers ``config.json`` dict of a llama, mistral or qwen2 model.

        Reads both the transformers 4 keys (``rope_theta``, ``rope_scaling``) and the transformers 5
        ``rope_parameters`` dict. Mistral's ``sliding_window`` is implemented exactly (every layer);
        Qwen2's per-layer sliding window (``use_sliding_window``) is not and raises.

        Raises:
          ValueError: unsupported model type, activation, MLP bias, RoPE scaling or attention layout.
        """
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [key for key in required if config.get(key) is None]
        model_type = config.get("model_type")
        if model_type not in _SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; supported: {', '.join(_SUPPORTED_MODEL_TYPES)}"
            )
        act = config.get("hidden_act", config.get("hidden_activation", "silu"))
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r} (only 'silu' / SwiGLU)")
        if config.get("mlp_bias"):
            raise ValueError("unsupported: mlp_bias=True")
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}")
        partial_rotary = (config.get("rope_parameters") or {}).get(
            "partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
        if float(partial_rotary) != 1.0:
            raise ValueError(f"unsupported: partial_rotary_factor={partial_rotary}")
        hidden_size = int(config["hidden_size"])
        num_heads = int(config["num_attention_heads"])
        head_dim = config.get("head_dim") or hidden_size // num_heads
        num_kv_heads = int(config.get("num_key_value_heads") or num_heads)

        rope_params = dict(config.get("rope_parameters") or {})
        rope_theta = float(rope_params.get("rope_theta", config.get("rope_theta", 10000.0)))
        scaling = dict(config.get("rope_scaling") or {})
        if not scaling and rope_params:
            scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type == "default":
            rope_scaling = None
        elif rope_type in _SUPPORTED_ROPE_TYPES:
            scaling["rope_type"] = rope_type
            scaling.pop("type", None)
            if float(scaling.get("attention_factor") or 1.0) != 1.0:
                raise ValueError("unsupported: rope attention_factor != 1")
            scaling.pop("attention_factor", None)
            rope_scaling = tuple(sorted((k, _hashable(v)) for k, v in scaling.items()))
        else:
            raise ValueError(
                f"unsupported rope scaling type {rope_type!r}; supported: default, "
                f"{', '.join(_SUPPORTED_ROPE_TYPES)}"
            )

        if model_type == "qwen2":
            attention_bias, attention_out_bias = True, False
            layer_types = config.get("layer_types")
            if layer_types is None:  # transformers 4: layers >= max_window_layers slide
                n_layers = int(config.get("num_hidden_layers", 0))
                first_sliding = int(config.get("max_window_layers", n_layers))
                sliding = bool(config.get("use_sliding_window")) and first_sliding < n_layers
            else:
                sliding = "sliding_attention" in layer_types
            if sliding:
                raise ValueError(
                    "unsupported: Qwen2 with use_sliding_window=True (a sliding window in some layers); "
                    "it only matters beyond sliding_window tokens: set use_sliding_window=false in "
                    "config.json if your sequences are never longer"
                )
            sliding_window = None
        else:
            attention_bias = attention_out_bias = bool(config.get("attention_bias", False))
            sliding_window = config.get("sliding_window") if model_type == "mistral" else None
            layer_types = config.get("layer_types") or []
            if any(t != "full_attention" for t in layer_types) and model_type != "mistral":
                raise ValueError(f"unsupported layer_types {sorted(set(layer_types))}")
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            attention_out_bias=attention_out_bias,
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            model_type=model_type,
            sliding_window=None if sliding_window is None else int(sliding_window),
        )

    def lora_shapes(self) -> dict[str, tuple[int, int]]:
        """``{target: (d_in, d_out)}`` of every LoRA-targetable projection."""
        q_dim = self.num_heads * self.head_dim
        kv_dim = self.num_kv_heads * self.head_dim
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, q_dim), "k_proj": (h, kv_dim), "v_proj": (h, kv_dim), "o_proj": (q_dim, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }


def _hashable(value):
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


# ----------------------------------------------------------------------------------------- RoPE


def rope_inv_freq(config: DecoderConfig) -> np.ndarray:
    """Rotary inverse frequencies, float32 ``(head_dim // 2,)``, with the config's scaling applied.

    Same formulas as transformers' ``ROPE_INIT_FUNCTIONS`` ("default", "linear", "llama3").
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    if config.rope_scaling is None:
        return inv_freq
    scaling = dict(config.rope_scaling)
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return (inv_freq / factor).astype(np.float32)
    # llama3: long wavelengths divided by factor, short kept, a smooth blend in between.
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, inv_freq_llama).astype(np.float32)


def rope_cos_sin(config: DecoderConfig, seq_len: int, positions: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables, float32: ``(seq_len, head_dim)`` for positions ``0..seq_len-1``, or
    ``(B, T, head_dim)`` for explicit int ``positions`` ``(B, T)`` (packed rows: each segment restarts at 0)."""
    inv_freq = jnp.asarray(rope_inv_freq(config))
    if positions is None:
        positions = jnp.arange(seq_len)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq.reshape((1,) * positions.ndim + inv_freq.shape)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x`` (B, T, N, D) by the tables ``cos``/``sin`` (T, D) or (B, T, D), in x's dtype (HF convention)."""
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos = cos.astype(x.dtype)[:, :, None, :]
    sin = sin.astype(x.dtype)[:, :, None, :]
    return x * cos + _rotate_half(x) * sin


# ---------------------------------------------------------------------------------- primitives


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, out_dtype) -> jax.Array:
    """RMSNorm over the last axis, computed in float32 (transformers' LlamaRMSNorm).

    ``x`` (..., H), ``weight`` (H,); returns (..., H) in ``out_dtype``: ``weight * normed``, where
    ``normed`` is first cast to ``out_dtype`` as transformers does.
    """
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(x32 * x32, axis=-1, keepdims=True)
    normed = (x32 * jax.lax.rsqrt(variance + eps)).astype(out_dtype)
    weight = weight.astype(out_dtype).reshape((1,) * (x.ndim - 1) + weight.shape)
    return weight * normed


def _project(x, weight, bias, adapter, lora_scale, dtype):
    """``x @ weight (+ bias) (+ lora_scale * (x @ a) @ b)`` in ``dtype``; x (B, T, d_in)."""
    y = jnp.einsum("btd,de->bte", x, weight.astype(dtype))
    if bias is not None:
        y = y + bias.astype(dtype)[None, None, :]
    if adapter is not None and "choice" in adapter:
        # a few adapters per row, one per token: a (B, K, d_in, r), b (B, K, r, d_out), choice (B, T, K) one-hot;
        # the low-rank products of the K adapters, each token's kept (K x the LoRA FLOPs of one adapter per row)
        low = jnp.einsum("btd,bkdr->btkr", x, adapter["a"].astype(dtype))
        low = low * adapter["choice"].astype(dtype)[..., None]
        delta = jnp.einsum("btkr,bkre->bte", low, adapter["b"].astype(dtype))
        y = y + (lora_scale * delta).astype(dtype)
    elif adapter is not None:
        per_row = adapter["a"].ndim == 3  # one adapter per row: a (B, d_in, r), b (B, r, d_out)
        low = jnp.einsum("btd,bdr->btr" if per_row else "btd,dr->btr", x, adapter["a"].astype(dtype))
        delta = jnp.einsum("btr,bre->bte" if per_row else "btr,re->bte", low, adapter["b"].astype(dtype))
        y = y + (lora_scale * delta).astype(dtype)
    return y


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def _is_nvidia_gpu(device) -> bool:
    if device.platform != "gpu":
        return False
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return "cuda" in version or "nvidia" in str(getattr(device, "device_kind", "")).lower()


def resolve_attention_impl(attention_impl: str | None, dtype=jnp.bfloat16, device=None) -> str | None:
    """The attention implementation :class:`Decoder` uses for ``attention_impl``.

    ``"auto"``: ``"cudnn"`` (fused attention) on an NVIDIA GPU when the compute ``dtype`` is bfloat16 or float16
    (the kernel's dtypes), else None (XLA); ``"xla"`` and None: None; ``"cudnn"``: ``"cudnn"``. ``device``:
    default ``jax.devices()[0]``.

    >>> resolve_attention_impl("auto", jnp.float32), resolve_attention_impl("xla"), resolve_attention_impl(None)
    (None, None, None)
    """
    if attention_impl is None or attention_impl == "xla":
        return None
    if attention_impl == "cudnn":
        return "cudnn"
    if attention_impl != "auto":
        raise ValueError(f"attention_impl: unknown {attention_impl!r}, allowed {', '.join(ATTENTION_IMPLS)}")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return None
    return "cudnn" if _is_nvidia_gpu(device if device is not None else jax.devices()[0]) else None


def _attention(config, attention_impl, q, k, v, kv_lengths, segment_ids):
    """Causal (grouped-query) attention of q (B, T, N, D), k/v (B, T, K, D); ``segment_ids`` (B, T) int32 or None:
    a query attends only to keys of its own segment (block-diagonal causal; segment 0 is padding and attends only
    to padding, which keeps its rows finite)."""
    window = None if config.sliding_window is None else (config.sliding_window - 1, 0)
    if segment_ids is not None and attention_impl == "cudnn":
        from shed_jax.lm._cudnn import packed_cudnn_attention

        return packed_cudnn_attention(q, k, v, segment_ids, window=window)
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]          # (B, 1, T, T)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask,
        is_causal=True,
        key_value_seq_lengths=kv_lengths,
        local_window_size=window,
        implementation=attention_impl,
    )


def _block(config, dtype, attention_impl, hidden, layer, adapters, cos, sin, kv_lengths, lora_scale,
           segment_ids=None, lora_index=None, lora_choice=None):
    """One pre-norm decoder block on ``hidden`` (B, T, H) in ``dtype``; ``layer``: one layer's arrays;
    ``lora_index`` (B,) or (B, K): each row's adapter(s) among the leading axis of ``adapters``' leaves (gathered
    here); ``lora_choice`` (B, T, K) one-hot: which of its row's K adapters each token uses."""
    batch, seq_len, _ = hidden.shape

    def adapter(name):
        found = None if adapters is None else adapters.get(name)
        if found is None or lora_index is None:
            return found
        gathered = {"a": found["a"][lora_index], "b": found["b"][lora_index]}
        if lora_choice is not None:
            gathered["choice"] = lora_choice
        return gathered

    x = rms_norm(hidden, layer["attn_norm"], config.rms_norm_eps, dtype)
    q = _project(x, layer["q_proj"], layer.get("q_bias"), adapter("q_proj"), lora_scale, dtype)
    k = _project(x, layer["k_proj"], layer.get("k_bias"), adapter("k_proj"), lora_scale, dtype)
    v = _project(x, layer["v_proj"], layer.get("v_bias"), adapter("v_proj"), lora_scale, dtype)
    q = q.reshape(batch, seq_len, config.num_heads, config.head_dim)
    k = k.reshape(batch, seq_len, config.num_kv_heads, config.head_dim)
    v = v.reshape(batch, seq_len, config.num_kv_heads, config.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attn = _attention(config, attention_impl, q, k, v, kv_lengths, segment_ids)
    attn = attn.reshape(batch, seq_len, config.num_heads * config.head_dim)
    hidden = hidden + _project(attn, layer["o_proj"], layer.get("o_bias"), adapter("o_proj"), lora_scale, dtype)

    x = rms_norm(hidden, layer["mlp_norm"], config.rms_norm_eps, dtype)
    gate = _project(x, layer["gate_proj"], None, adapter("gate_proj"), lora_scale, dtype)
    up = _project(x, layer["up_proj"], None, adapter("up_proj"), lora_scale, dtype)
    mlp = _project(jax.nn.silu(gate) * up, layer["down_proj"], None, adapter("down_proj"), lora_scale, dtype)
    return hidden + mlp


# ------------------------------------------------------------------------------------- modules

REMAT_POLICIES = ("none", "block", "dots_saveable")


def remat_body(body, remat: bool | str):
    """``body`` wrapped for the backward pass: ``"none"``/False: as is (every activation kept, 4N FLOPs per token
    and step with a frozen base); ``"block"``/True: ``jax.checkpoint`` (only each block's input kept, the block
    recomputed: 6N); ``"dots_saveable"``: ``jax.checkpoint`` with the ``dots_with_no_batch_dims_saveable``
    policy (matmul outputs kept, element-wise work recomputed: about 4N FLOPs, less memory than none)."""
    policy = {False: "none", True: "block"}.get(remat, remat) if isinstance(remat, bool) else remat
    if policy == "none":
        return body
    if policy == "block":
        return jax.checkpoint(body, prevent_cse=False)
    if policy == "dots_saveable":
        return jax.checkpoint(body, prevent_cse=False,
                              policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"remat: unknown {remat!r}, allowed {', '.join(REMAT_POLICIES)} (or a bool)")



def weight_shapes(config: DecoderConfig) -> dict:
    """``{name: shape}`` of every weight, nested like the module (``"blocks"`` holds the stacked ones)."""
    n_layers, hidden = config.num_layers, config.hidden_size
    io = config.lora_shapes()
    blocks = {"attn_norm": (n_layers, hidden), "mlp_norm": (n_layers, hidden)}
    blocks.update({name: (n_layers, *io[name]) for name in LORA_TARGETS})
    if config.attention_bias:
        blocks.update({f"{p}_bias": (n_layers, io[f"{p}_proj"][1]) for p in ("q", "k", "v")})
    if config.attention_out_bias:
        blocks["o_bias"] = (n_layers, hidden)
    shapes = {"embed_tokens": (config.vocab_size, hidden), "blocks": blocks, "norm": (hidden,)}
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (hidden, config.vocab_size)
    return shapes


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_weights(key: jax.Array, config: DecoderConfig, param_dtype) -> dict:
    """transformers-like initial weights: normal(0, 0.02) matrices, zero biases, unit norms.

    One jitted program drawing one flat normal vector: per-shape eager ``jax.random`` calls each
    compile their own threefry kernel, which costs seconds on a small CPU.
    """
    shapes = weight_shapes(config)
    flat_shapes = {("blocks", k): v for k, v in shapes["blocks"].items()}
    flat_shapes.update({(k,): v for k, v in shapes.items() if k != "blocks"})
    matrices = [k for k, v in flat_shapes.items() if len(v) - (k[0] == "blocks") == 2]
    sizes = [math.prod(flat_shapes[k]) for k in matrices]
    noise = 0.02 * jax.random.normal(key, (sum(sizes),), jnp.float32)
    values, offset = {}, 0
    for name, size in zip(matrices, sizes):
        values[name] = noise[offset:offset + size].reshape(flat_shapes[name])
        offset += size
    for name, shape in flat_shapes.items():
        if name not in values:
            fill = 1.0 if name[-1].endswith("norm") else 0.0
            values[name] = jnp.full(shape, fill, jnp.float32)
    out: dict = {"blocks": {}}
    for name, value in values.items():
        (out["blocks"] if name[0] == "blocks" else out)[name[-1]] = value.astype(param_dtype)
    return out


class StackedBlocks(nnx.Module):
    """The weights of all ``num_layers`` decoder blocks, stacked on a leading layer axis.

    Args:
      arrays: ``{name: (num_layers, ...) array}``: ``attn_norm``, ``mlp_norm``, the seven projections
        of :data:`LORA_TARGETS` and, when configured, ``q_bias``, ``k_bias``, ``v_bias``, ``o_bias``.
    """

    _NAMES = ("attn_norm", "mlp_norm", *LORA_TARGETS, "q_bias", "k_bias", "v_bias", "o_bias")

    def __init__(self, arrays: Mapping[str, jax.Array]):
        for name in self._NAMES:
            setattr(self, name, nnx.Param(arrays[name]) if name in arrays else None)

    def arrays(self) -> dict[str, jax.Array]:
        """``{name: (num_layers, ...) array}`` of the present weights (biases only when configured)."""
        return {name: getattr(self, name)[...] for name in self._NAMES if getattr(self, name) is not None}


class Decoder(nnx.Module):
    """Llama-family causal decoder; see the module docstring for the weight layout.

    Args:
      config: the :class:`DecoderConfig`.
      dtype: compute dtype of activations and matmuls (bfloat16 by default; float32 for parity tests).
        RMSNorm statistics, RoPE tables, attention softmax and the returned hidden states / logits are
        float32 regardless.
      param_dtype: storage dtype of the weights.
      attention_impl: None or "xla" (XLA, the default, right on CPU), "cudnn" (fused attention, NVIDIA GPUs,
        bf16/f16 only) or "auto" (cuDNN on an NVIDIA GPU in bf16/f16, XLA otherwise;
        :func:`resolve_attention_impl`). The resolved value is the attribute ``attention_impl``.
      rngs: ``nnx.Rngs`` for the random initialisation.

    Example:
      >>> cfg = DecoderConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
      ...                     num_heads=4, num_kv_heads=2, head_dim=4)
      >>> model = Decoder(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
      >>> model.unembed(model(jnp.zeros((1, 5), jnp.int32))).shape
      (1, 5, 32)
    """

    def __init__(self, config: DecoderConfig, *, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                 attention_impl: str | None = None, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.attention_impl = resolve_attention_impl(attention_impl, dtype)
        weights = _init_weights(rngs.params(), config, jnp.dtype(param_dtype))
        self.embed_tokens = nnx.Param(weights["embed_tokens"])
        self.blocks = StackedBlocks(weights["blocks"])
        self.norm = nnx.Param(weights["norm"])
        self.lm_head = nnx.Param(weights["lm_head"]) if "lm_head" in weights else None

    def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
                 lora: Mapping[str, Mapping[str, jax.Array]] | None = None,
                 lora_scale: float | jax.Array = 1.0, remat: bool | str = False,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 lora_index: jax.Array | None = None, lora_choice: jax.Array | None = None) -> jax.Array:
        """Final-norm hidden states, float32 ``(B, T, hidden_size)``.

        Args:
          input_ids: int32 ``(B, T)`` token ids.
          attention_mask: optional bool ``(B, T)``, True for real tokens, padding on the right only
            (it is reduced to per-row lengths; positions are always 0..T-1). Padded keys are never
            attended to; the outputs at padded positions are unspecified (finite).
          lora: optional adapters ``{target: {"a": (L, d_in, r), "b": (L, r, d_out)}}`` for any
            subset of :data:`LORA_TARGETS` (see :func:`init_lora`).
          lora_scale: multiplier of every adapter's update (peft's ``alpha / r``).
          remat: what the backward pass recomputes (see :data:`REMAT_POLICIES`): ``"none"`` / False (keep every
            activation), ``"block"`` / True (recompute each block from its input), ``"dots_saveable"`` (keep
            the matmul outputs, recompute the cheap element-wise work).
          positions: optional int32 ``(B, T)`` RoPE positions (default ``0..T-1`` in every row). Packed rows
            restart them at 0 in each segment.
          segment_ids: optional int32 ``(B, T)``: packed rows, several sequences per row; a token attends only
            to earlier tokens of its own segment (block-diagonal causal attention). Segments are contiguous
            and numbered from 1; 0 marks padding (at the end of a row). Excludes ``attention_mask``.
          lora_index: optional int32 ``(B,)``: several adapters, one per row. ``lora``'s leaves then carry an
            adapter axis after the layer axis, ``a (L, A, d_in, r)``, ``b (L, A, r, d_out)``, and row ``b`` uses
            adapter ``lora_index[b]`` (rows of different coalitions in one batch; the gradient of each adapter
            collects its own rows only). ``(B, K)``: a few adapters per row (rows that mix coalitions' sequences),
            each token picking one of them by ``lora_choice``.
          lora_choice: optional int32 ``(B, T)`` in ``0..K-1``, with a ``(B, K)`` ``lora_index``: token ``t`` of row
            ``b`` uses adapter ``lora_index[b, lora_choice[b, t]]``. The K adapters' low-rank products are all
            computed and each token keeps its own (K x the LoRA FLOPs of one adapter per row, no per-token gather
            of adapter matrices); with block-diagonal ``segment_ids`` and one adapter per segment, each adapter's
            gradient collects its own segments only.
        """
        config, dtype = self.config, self.dtype
        seq_len = input_ids.shape[1]
        hidden = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(dtype)
        cos, sin = rope_cos_sin(config, seq_len, positions)
        kv_lengths = None
        if attention_mask is not None and segment_ids is not None:
            raise ValueError("attention_mask and segment_ids: give one (segment 0 is padding)")
        if attention_mask is not None:
            kv_lengths = jnp.sum(attention_mask.astype(jnp.int32), axis=-1, dtype=jnp.int32)
        adapters = None if lora is None else {name: lora[name] for name in lora}
        choice = None
        if lora_choice is not None:
            if lora_index is None or lora_index.ndim != 2:
                raise ValueError("lora_choice: needs a (B, K) lora_index")
            choice = jax.nn.one_hot(lora_choice, lora_index.shape[1], dtype=dtype)                  # (B, T, K)
        elif lora_index is not None and lora_index.ndim == 2:
            raise ValueError("lora_index: a (B, K) index needs lora_choice (B, T)")

        def body(carry, layer_and_adapters):
            layer, layer_adapters = layer_and_adapters
            out = _block(config, dtype, self.attention_impl, carry, layer, layer_adapters,
                         cos, sin, kv_lengths, lora_scale, segment_ids, lora_index, choice)
            return out, None

        body = remat_body(body, remat)
        hidden, _ = jax.lax.scan(body, hidden, (self.blocks.arrays(), adapters))
        return rms_norm(hidden, self.norm[...], config.rms_norm_eps, jnp.float32)

    def unembed(self, hidden: jax.Array, out_dtype=jnp.float32) -> jax.Array:
        """LM head: hidden ``(..., hidden_size)`` -> logits ``(..., vocab_size)`` in ``out_dtype`` (float32 by default).

        The matmul runs in the compute dtype with float32 accumulation; ``out_dtype=bfloat16`` rounds the result
        (half the memory of a chunk of full-vocabulary logits; see :func:`shed_jax.lm.scoring.target_logprob_sums`).
        """
        hidden = hidden.astype(self.dtype)
        if self.lm_head is None:
            logits = jnp.einsum("...h,vh->...v", hidden, self.embed_tokens[...].astype(self.dtype),
                                preferred_element_type=jnp.float32)
        else:
            logits = jnp.einsum("...h,hv->...v", hidden, self.lm_head[...].astype(self.dtype),
                                preferred_element_type=jnp.float32)
        return logits.astype(out_dtype)


# ----------------------------------------------------------------------------------------- LoRA


def init_lora(config: DecoderConfig, *, rank: int, targets=LORA_TARGETS, key: jax.Array,
              dtype=jnp.float32) -> dict[str, dict[str, jax.Array]]:
    """Fresh LoRA adapters ``{target: {"a": (L, d_in, rank), "b": (L, rank, d_out)}}``.

    ``a`` is uniform on ``(-1/sqrt(d_in), 1/sqrt(d_in))`` (peft's ``kaiming_uniform_(a=sqrt(5))``)
    and ``b`` is zero, so an untrained adapter leaves the model unchanged.

    Example:
      >>> cfg = DecoderConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
      ...                     num_heads=4, num_kv_heads=2, head_dim=4)
      >>> lora = init_lora(cfg, rank=4, targets=("q_proj", "down_proj"), key=jax.random.key(0))
      >>> lora["down_proj"]["a"].shape, lora["down_proj"]["b"].shape
      ((2, 32, 4), (2, 4, 16))
    """
    shapes = config.lora_shapes()
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {LORA_TARGETS}")
    return _init_lora(key, config, int(rank), tuple(targets), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init_lora(key, config: DecoderConfig, rank: int, targets: tuple, dtype) -> dict:
    shapes = config.lora_shapes()
    sizes = [config.num_layers * shapes[t][0] * rank for t in targets]
    unit = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)  # one threefry kernel
    adapters, offset = {}, 0
    for target, size in zip(targets, sizes):
        d_in, d_out = shapes[target]
        a = unit[offset:offset + size].reshape(config.num_layers, d_in, rank) / math.sqrt(d_in)
        offset += size
        adapters[target] = {"a": a.astype(dtype), "b": jnp.zeros((config.num_layers, rank, d_out), dtype)}
    return adapters
