"""Proxy utilities: value a coalition of proxy examples by fine-tuning a small model on it.

``base`` holds the batched utility contract (``masks (B, K) bool -> values (B,) float32``) that the
Shapley engine drives; ``embedding`` holds the CPU-default utility, a contrastive bilinear scorer in
sentence-embedding space.
"""
from shed_jax.proxies.base import BatchedUtility, as_mask_batch
from shed_jax.proxies.embedding import (
    BilinearParams,
    EmbeddingProxyConfig,
    EmbeddingProxyUtility,
    SpectralStats,
    ValidationEmbeddings,
    bucket_sizes,
    embed_validation,
    infonce_grad,
    infonce_loss,
    init_params,
    spectral_grad,
    spectral_loss,
    spectral_stats,
    training_flops,
)

__all__ = [
    "BatchedUtility",
    "BilinearParams",
    "EmbeddingProxyConfig",
    "EmbeddingProxyUtility",
    "SpectralStats",
    "ValidationEmbeddings",
    "as_mask_batch",
    "bucket_sizes",
    "embed_validation",
    "infonce_grad",
    "infonce_loss",
    "init_params",
    "spectral_grad",
    "spectral_loss",
    "spectral_stats",
    "training_flops",
]
