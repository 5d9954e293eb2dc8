"""The slot count from the compiler: the most coalitions fine-tuned at once whose training step fits a memory
budget according to XLA's own memory analysis of the real step (``compiled.memory_analysis()``).

Two trial compiles, at 1 and 2 slots, of the step the run uses (the widest: ``batch_size`` packed rows, or the widest
sequence bucket), give the step's bytes as ``fixed + slots x per_slot`` (arguments + outputs + temporaries -
aliased; the base weights and token tables are in ``fixed``, shared by every slot). The slot count is
``budget // per_slot`` (at least 1, at most ``cap``). Results are remembered per process (the same model and recipe
are sized once); the trial programs themselves land in the persistent compilation cache when the CLI turned it on.
Where the backend gives no memory analysis, the caller falls back to its formula (``None`` here).
"""
from __future__ import annotations

from typing import Callable

__all__ = ["RECOMPUTE_LADDER", "compiled_step_bytes", "recompute_from_compiler", "slots_from_compiler"]

_REMEMBERED: dict = {}


def compiled_step_bytes(memory: dict[str, int]) -> int:
    """Peak bytes of a compiled step from :meth:`SlotTrainer.compiled_memory`'s fields."""
    return (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"] + memory["temp_size_in_bytes"]
            - memory["alias_size_in_bytes"])


def slots_from_compiler(make_trainer: Callable[[int], object], budget_bytes: int, *, cap: int,
                        key=None) -> dict | None:
    """``{"slots", "per_slot_bytes", "fixed_bytes"}`` from trial compiles of ``make_trainer(1)`` and
    ``make_trainer(2)`` (:class:`~shed_jax.lm.finetune.SlotTrainer` s), or None when the compiler reports no memory
    analysis. ``key`` (hashable): remember the answer for this process."""
    if key is not None and (key, budget_bytes, cap) in _REMEMBERED:
        return _REMEMBERED[(key, budget_bytes, cap)]
    try:
        one, two = (compiled_step_bytes(make_trainer(n).compiled_memory()) for n in (1, 2))
    except (AttributeError, NotImplementedError, TypeError, KeyError):
        return None
    if one <= 0 or two <= 0:
        return None
    per_slot = max(two - one, 1)
    result = {"slots": int(max(1, min(cap, budget_bytes // per_slot))), "per_slot_bytes": int(per_slot),
              "fixed_bytes": int(max(one - per_slot, 0))}
    if key is not None:
        _REMEMBERED[(key, budget_bytes, cap)] = result
    return result


# (remat, logits_chunk) from the least recomputation and the widest loss-head chunk to the most memory-saving: no
# recompute (4N FLOPs per token) before keeping only the matmul outputs (about 4N, less memory) before recomputing
# each block (6N); within each, wider logits chunks (fewer, larger unembedding matmuls) first
RECOMPUTE_LADDER = (("none", 64), ("none", 16), ("dots_saveable", 64), ("dots_saveable", 16), ("block", 64),
                    ("block", 16), ("block", 4), ("block", 1))


def recompute_from_compiler(make_trainer: Callable[[str, int], object], budget_bytes: int, *,
                            ladder=RECOMPUTE_LADDER, key=None) -> dict | None:
    """The remat policy and loss-head chunk of the training step, chosen by XLA's memory analysis of the real step:
    the first ``(remat, logits_chunk)`` of ``ladder`` (least recomputation first) whose compiled step
    (``make_trainer(remat, logits_chunk).compiled_memory()``, at the caller's slot count) needs at most
    ``budget_bytes``; the last one when none does. A large budget compiles once (no recompute); each step down the
    ladder compiles once more.

    Returns ``{"remat", "logits_chunk", "step_bytes", "fits", "tried": [[remat, chunk, bytes], ...]}``, or None when
    the compiler reports no memory analysis. ``key`` (hashable): remember the answer for this process."""
    if key is not None and (key, budget_bytes, tuple(ladder)) in _REMEMBERED:
        return _REMEMBERED[(key, budget_bytes, tuple(ladder))]
    tried = []
    for remat, chunk in ladder:
        try:
            need = compiled_step_bytes(make_trainer(remat, chunk).compiled_memory())
        except (AttributeError, NotImplementedError, TypeError, KeyError):
            return None
        if need <= 0:
            return None
        tried.append([remat, int(chunk), int(need)])
        if need <= budget_bytes:
            break
    remat, chunk, need = tried[-1]
    result = {"remat": remat, "logits_chunk": chunk, "step_bytes": need, "fits": need <= budget_bytes,
              "tried": tried}
    if key is not None:
        _REMEMBERED[(key, budget_bytes, tuple(ladder))] = result
    return result
