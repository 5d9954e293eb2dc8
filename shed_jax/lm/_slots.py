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

__all__ = ["compiled_step_bytes", "slots_from_compiler"]

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
