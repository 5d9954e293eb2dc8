"""Packed (segment) attention through cuDNN's fused flash-attention kernel, for NVIDIA GPUs.

``jax.nn.dot_product_attention(implementation="cudnn")`` takes per-row lengths but no segments; the kernel
underneath (``jax._src.cudnn.fused_attention_stablehlo.dot_product_attention``) takes packed rows as it expects
them: per row, the length of each segment ``q_seqlen``/``kv_seqlen`` ``(B, M)`` and its start ``q_offsets``/
``kv_offsets`` ``(B, M + 1)``, unused entries -1, with the ``PADDING_CAUSAL`` mask. This module turns contiguous
segment ids (1, 1, 2, 2, 2, 0 ...; 0 is padding at the end of a row) into that form. It imports a private JAX
module, so it is isolated here and exercised by a test that runs only when a GPU is present.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_lengths_and_offsets(segment_ids: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """``(lengths (B, M) int32, offsets (B, M + 1) int32)`` of contiguous segments ``1..M`` in ``segment_ids``
    ``(B, T)``; absent segments get -1 in both (cuDNN's convention). Segment 0 (padding) is not a segment.

    >>> ids = jnp.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]], jnp.int32)
    >>> lengths, offsets = segment_lengths_and_offsets(ids, 3)
    >>> lengths.tolist(), offsets.tolist()
    ([[2, 3, -1], [6, -1, -1]], [[0, 2, 5, -1], [0, 6, -1, -1]])
    """
    numbers = jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)
    lengths = jnp.sum(segment_ids[:, None, :] == numbers[None, :, None], axis=-1, dtype=jnp.int32)  # (B, M)
    present = lengths > 0
    starts = jnp.cumsum(lengths, axis=-1) - lengths
    ends = jnp.sum(lengths, axis=-1, keepdims=True)                                               # (B, 1)
    offsets = jnp.concatenate([jnp.where(present, starts, -1), ends], axis=-1)
    # the closing offset sits right after the last present segment; the rest is -1
    n_present = jnp.sum(present, axis=-1, keepdims=True)
    index = jnp.arange(max_segments + 1)[None, :]
    offsets = jnp.where(index < n_present, offsets, jnp.where(index == n_present, ends, -1))
    return jnp.where(present, lengths, -1), offsets.astype(jnp.int32)


def packed_cudnn_attention(q, k, v, segment_ids, *, window=None):
    """Block-diagonal causal attention of packed rows with cuDNN: q (B, T, N, D), k/v (B, T, K, D), bf16/f16.

    ``window``: None or ``(left, 0)`` (a causal sliding window of ``left + 1`` keys)."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_attention

    batch, length, n_heads, head_dim = q.shape
    if k.shape[2] != n_heads:  # cuDNN's packed path wants matching heads: repeat the KV groups
        k = jnp.repeat(k, n_heads // k.shape[2], axis=2)
        v = jnp.repeat(v, n_heads // v.shape[2], axis=2)
    lengths, offsets = segment_lengths_and_offsets(segment_ids, length)
    return cudnn_attention(q, k, v, None, None, lengths, lengths, offsets, offsets,
                           scale=1.0 / float(head_dim) ** 0.5, mask_type=MaskType.PADDING_CAUSAL,
                           sliding_window_length=None if window is None else window[0] + 1)
