"""Proxy utilities: value a coalition of proxy examples by fine-tuning a small model on it.

``base`` holds the contract (:class:`ProxyInputs` in, a batched utility ``masks (B, n) bool -> (B,) float32``
out) and a generic batched coalition evaluator; ``registry`` maps ``--proxy NAME`` to a factory and a typed
configuration; ``embedding`` is the CPU default (a contrastive scorer in sentence-embedding space) and ``lm``
fine-tunes LoRA adapters of a causal LM.

Register your own::

    from shed_jax import proxies

    proxies.register("toy", build_toy, config_class=ToyConfig)   # then: shed value --proxy toy ...

Names are imported on first use (PEP 562), so ``from shed_jax.proxies import registry`` (or
``EmbeddingProxyConfig``) loads no JAX.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "base": ["BatchedUtility", "ProxyInputs", "as_mask_batch", "bucket_sizes", "chunk_size_for",
             "evaluate_coalitions"],
    "embedding_config": ["EmbeddingProxyConfig"],
    "embedding": ["BilinearParams", "EmbeddingProxyUtility", "SpectralStats",
                  "ValidationEmbeddings", "embed_validation", "infonce_grad", "infonce_loss", "init_params",
                  "spectral_grad", "spectral_loss", "spectral_stats", "training_flops"],
    "registry": ["ProxySpec", "config_class", "get", "make_config", "names", "register", "spec_field", "unregister"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
