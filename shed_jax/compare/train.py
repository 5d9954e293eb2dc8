"""The batched fine-tune of a comparison: every (training set x seed) pair is one slot of one
:class:`~shed_jax.lm.finetune.SlotTrainer` (one base model, many LoRA adapters, one compiled step).

Every training set's records go into one token table (a record shared by several sets, e.g. a selected record
that is also in ``full``, is tokenised once); a slot's members are its set's rows. Slot ``(set, j)`` draws its
minibatches from seed ``j`` and its members (:func:`shed_jax.lm.finetune.coalition_rng`), so seed ``j`` of two
sets differ only in the data, and the result of a slot does not depend on which other slots share its batch:
``max_slots=1`` runs the same fine-tunes one after another (the cost comparison of ``bench/quality.py``). All
slots start from the same initial adapter (``b = 0``: the untuned model), so the seeds vary the minibatch order.

Slots whose recipes differ (``--match data``: each set has its own number of steps) go to one trainer per
recipe; the untuned model is an empty slot (an inactive slot keeps the initial adapter).

After each round the adapters are scored at once by every :class:`~shed_jax.lm.scoring.StackScorer` given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import jax
import numpy as np

from shed_jax.lm.finetune import FinetuneRecipe, SlotTrainer, coalition_rng, minibatch_schedule

__all__ = ["Slot", "SeededSlotTrainer", "train_and_score"]


@dataclass(frozen=True)
class Slot:
    """One fine-tune: ``members`` (rows of the token table; empty = the untuned model), its ``seed`` and
    ``recipe``, and a ``key`` naming it, e.g. ``("shed", 1)``."""

    key: tuple
    members: np.ndarray
    seed: int
    recipe: FinetuneRecipe


class SeededSlotTrainer(SlotTrainer):
    """A :class:`SlotTrainer` whose slots each have their own seed (``slot_seeds``, set before :meth:`train`)."""

    slot_seeds: Sequence[int] = ()

    def schedules(self, member_lists, seed):
        recipe = self.recipe
        rows = np.zeros((self.n_slots, recipe.steps, recipe.batch_size), np.int32)
        for slot, members in enumerate(member_lists):  # host: one small permutation draw per slot
            if len(members) == 0:
                continue
            slot_seed = self.slot_seeds[slot] if slot < len(self.slot_seeds) else seed
            rows[slot] = minibatch_schedule(members, steps=recipe.steps, batch_size=recipe.batch_size,
                                            rng=coalition_rng(members, slot_seed))
        return rows


def train_and_score(graphdef, base_state, table, slots: Sequence[Slot], *, lora_init, scorers: Mapping[str, object],
                    max_slots: int | None = None, max_length: int | None = None, log=None,
                    keep_adapters: bool = False) -> dict:
    """Fine-tune every slot and score it with every scorer.

    Args:
        graphdef, base_state: ``nnx.split`` of the base decoder.
        table: the training :class:`~shed_jax.lm.prompts.TokenTable`.
        slots: the fine-tunes; slots with equal recipes share one trainer, ``max_slots`` at a time (default:
            all of them in one round).
        lora_init: the initial adapter (unstacked).
        scorers: name -> :class:`~shed_jax.lm.scoring.StackScorer` (called on each round's adapter stack).
        keep_adapters: also return every slot's trained adapter (NumPy; for tests).

    Returns:
        ``{"scores": {name: (n_slots, ...) float32 in the order of slots}, "train_seconds", "score_seconds",
        "rounds", "n_traces", "adapters" (when asked)}``.
    """
    log = log or (lambda message: None)
    import jax.numpy as jnp

    from shed_jax.lm.finetune import stack_adapters

    by_recipe: dict[FinetuneRecipe, list[int]] = {}
    empty = [index for index, slot in enumerate(slots) if len(slot.members) == 0]
    for index, slot in enumerate(slots):
        if len(slot.members) > 0:
            by_recipe.setdefault(slot.recipe, []).append(index)
    if not by_recipe:
        raise ValueError("slots: nothing to fine-tune")
    out = {name: [None] * len(slots) for name in scorers}
    adapters = [None] * len(slots)
    train_seconds = score_seconds = 0.0
    rounds = traces = 0
    for recipe, indices in by_recipe.items():
        width = len(indices) if max_slots is None else max(1, min(int(max_slots), len(indices)))
        trainer = SeededSlotTrainer(graphdef, base_state, table, recipe, n_slots=width, lora_init=lora_init,
                                    max_length=max_length)
        for start in range(0, len(indices), width):
            chunk = indices[start:start + width]
            trainer.slot_seeds = [int(slots[i].seed) for i in chunk]
            begin = time.perf_counter()
            state = trainer.train([slots[i].members for i in chunk], seed=0)
            jax.block_until_ready(state.lora)
            train_seconds += time.perf_counter() - begin
            rounds += 1
            log(f"compare: fine-tuned {len(chunk)} slot(s) x {recipe.steps} steps in "
                f"{time.perf_counter() - begin:.1f} s")
            begin = time.perf_counter()
            # the untuned model (empty slots) is scored with the first round: its adapter is appended to the
            # stack instead of occupying a training slot, whose steps would compute for nothing
            scored_slots, stack = list(chunk), jax.tree_util.tree_map(lambda x: x[: len(chunk)], state.lora)
            if empty:
                scored_slots += empty
                stack = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), stack,
                                               stack_adapters(lora_init, len(empty)))
                empty_done, empty = empty, []
            else:
                empty_done = []
            for name, scorer in scorers.items():
                scored = np.asarray(scorer(stack))
                for position, i in enumerate(scored_slots):
                    out[name][i] = scored[position]
            score_seconds += time.perf_counter() - begin
            if keep_adapters:
                host = jax.tree_util.tree_map(np.asarray, state.lora)
                for position, i in enumerate(chunk):
                    adapters[i] = jax.tree_util.tree_map(lambda x, p=position: x[p], host)
                for i in empty_done:
                    adapters[i] = jax.tree_util.tree_map(np.asarray, lora_init)
        traces += trainer.n_traces
    result = {"scores": {name: np.stack(rows) for name, rows in out.items()}, "train_seconds": train_seconds,
              "score_seconds": score_seconds, "rounds": rounds, "train_traces": traces}
    if keep_adapters:
        result["adapters"] = adapters
    return result
