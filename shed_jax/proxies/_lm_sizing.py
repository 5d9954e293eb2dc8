"""How many coalitions the LM proxy fine-tunes at once when the compiler is not asked: a per-slot memory formula
and the memory budget (:class:`shed_jax.proxies.lm.LMProxyUtility` asks the compiler where it can,
:func:`shed_jax.lm._slots.slots_from_compiler`)."""
from __future__ import annotations

import jax

from shed_jax.proxies.lm_config import LMProxyConfig, compute_dtype

__all__ = ["default_slots", "per_slot_bytes", "slot_budget_bytes"]

def _lora_parameter_count(model_config, rank: int, targets) -> int:
    shapes = model_config.lora_shapes()
    return sum(model_config.num_layers * rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def per_slot_bytes(model_config, config: LMProxyConfig) -> int:
    """Rough peak bytes of one slot: adapter + gradient + AdamW moments (float32), the saved residual stream of
    every layer plus one block's activations (``remat``), and the larger of the training and scoring chunks of
    full-vocabulary logits (with their softmax temporaries)."""
    act_bytes = 2 if compute_dtype(config.dtype) == "bfloat16" else 4
    h, i, n_layers = model_config.hidden_size, model_config.intermediate_size, model_config.num_layers
    tokens = max(config.batch_size, config.eval_batch_size) * config.max_length
    block = tokens * (8 * h + 4 * i) * act_bytes
    residual = config.batch_size * config.max_length * h * 4 * (n_layers if config.remat else 12 * n_layers)
    rows = max(config.batch_size, config.eval_batch_size)
    logits = 3 * 4 * rows * config.logits_chunk * model_config.vocab_size
    return 16 * _lora_parameter_count(model_config, config.rank, config.targets) + block + residual + logits


def slot_budget_bytes(config: LMProxyConfig, backend: str | None = None) -> int:
    """The memory for the slots: ``memory_budget_mb``, else 2048 MiB on a CPU, else half the accelerator's free
    memory (at least 1 GiB)."""
    backend = jax.default_backend() if backend is None else backend
    if config.memory_budget_mb is not None:
        return config.memory_budget_mb << 20
    if backend == "cpu":
        return 2048 << 20
    stats = jax.local_devices()[0].memory_stats() or {}
    limit, used = stats.get("bytes_limit", 16 << 30), stats.get("bytes_in_use", 0)
    return max((limit - used) // 2, 1 << 30)


def default_slots(model_config, config: LMProxyConfig, *, backend: str | None = None) -> int:
    """``config.slots``, or as many slots as the memory budget allows by the formula :func:`per_slot_bytes` (1..64;
    at most 8 on a CPU, where a wider batch no longer speeds up the 2-16 cores). :class:`LMProxyUtility` asks the
    compiler instead where it can (:func:`shed_jax.lm._slots.slots_from_compiler`)."""
    if config.slots is not None:
        return config.slots
    backend = jax.default_backend() if backend is None else backend
    budget = slot_budget_bytes(config, backend)
    cap = 8 if backend == "cpu" else 64
    return int(max(1, min(cap, budget // max(per_slot_bytes(model_config, config), 1))))
