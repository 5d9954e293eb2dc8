"""The LM proxy's cost estimate: one optimiser step per training width and one scoring chunk per validation width,
timed with compilation measured apart and scaled to a run (:meth:`shed_jax.proxies.lm.LMProxyUtility.estimate_cost`),
and the settings that would bring a run within a time budget (:func:`cheaper_options`)."""
from __future__ import annotations

import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from shed_jax import interrupt
from shed_jax.lm.prompts import bucket_for
from shed_jax.progress import format_duration

__all__ = ["cheaper_options", "measure_cost"]

_logger = logging.getLogger("shed_jax.proxies.lm")

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


# a step or scoring chunk whose first call ran shorter than this is called once more and the second call timed: the
# first call's one-time costs (allocation, a persistent-cache load that the compile events miss) are small against a
# SmolLM2 step on a CPU but, multiplied by `steps`, overestimated a tiny model's run 5x (0.2x real / estimate)
_RETIME_BELOW_S = 2.0


def _timed_first_call(function):
    """``(result, seconds, compile_seconds)`` of ``function()`` (its device work waited for): the compile seconds
    are what JAX's compile-time events (tracing, lowering, XLA compile or persistent-cache load) report during the
    call, so ``seconds - compile_seconds`` is the run time of one call (the first: it errs long by one-time costs)."""
    from jax import monitoring

    compiling = []

    def listen(event, duration, **_):
        if event in _COMPILE_EVENTS:
            compiling.append(float(duration))

    monitoring.register_event_duration_secs_listener(listen)
    try:
        start = time.perf_counter()
        result = jax.block_until_ready(function())
        seconds = time.perf_counter() - start
    finally:
        try:
            monitoring.unregister_event_duration_listener(listen)
        except (AttributeError, ValueError):  # pragma: no cover - other JAX versions
            monitoring._unregister_event_duration_listener_by_callback(listen)
    return result, seconds, min(sum(compiling), seconds)


def measure_cost(utility, *, n_sample_rounds: int = 32, max_timed_widths: int = 2,
                  max_timed_score_widths: int = 1) -> dict[str, Any]:
    """Time one optimiser step per training width and one scoring chunk per validation width that a run will
    use, and scale (the result is kept; later calls are free).

    The training widths come from the minibatch schedules of seeded random coalitions (sizes uniform in
    ``1..n_players``, as the prefixes of Monte Carlo permutations are; host work only); each step of a round
    is padded to the widest sequence among its slots (packed steps: its width is its number of packed rows; packed
    across slots: the rows of all its slots).
    At most ``max_timed_widths`` training widths (the narrowest and widest used) are timed, and
    ``max_timed_score_widths`` scoring widths (the widest first); the others are interpolated linearly in the
    width (a scoring width below the narrowest timed one: proportionally to the width, which errs long).

    Each timed function is called once: its compilation (tracing, lowering and XLA's compile, or the load
    from JAX's persistent compilation cache, :mod:`shed_jax._compile_cache`) is measured by JAX's own
    compile-time events and subtracted, and the rest is the step's time. The compiled functions are the ones
    the run calls (same jit caches, and the same persistent cache entries in a later process). Compilation is
    reported apart (``seconds_compile``: the mean measured compile time times the widths the run compiles).

    Returns a dict: ``seconds_per_round``, ``seconds_compile``, ``seconds_step`` (width -> s, timed or
    interpolated), ``step_width_share`` (width -> share of the steps), ``seconds_scoring_round``,
    ``timed`` (what was timed), ``seconds_measuring`` (the cost of this estimate).
    """
    from shed_jax.progress import bar as progress_bar

    begin = time.perf_counter()
    trainer, scorer, recipe = utility.trainer, utility.scorer, utility.trainer.recipe
    rng = np.random.default_rng(np.random.SeedSequence([utility.seed, 0xE57]))
    widths: list[int] = []
    sample_rows = sample_plans = None
    for _ in range(n_sample_rounds):  # host: schedules of random coalitions -> the width of every step
        members = [np.sort(rng.permutation(utility.n_players)[: rng.integers(1, utility.n_players + 1)])
                   for _ in range(utility.n_slots)]
        rows = trainer.schedules(members, utility.seed)
        sample_rows = rows if sample_rows is None else sample_rows
        if trainer.across_slots:  # packed across slots: the step's rows of all slots (the "width" here)
            plan = trainer.shared_plan(rows, np.ones(utility.n_slots, bool))
            widths.extend(int(step[0].shape[0]) for step in plan)
            sample_plans = plan if sample_plans is None else sample_plans
        elif trainer.packing:  # a packed step's cost follows its rows of max_length tokens (the "width" here)
            plan = trainer.packed_plan(rows, np.ones(utility.n_slots, bool))
            widths.extend(int(source.shape[1]) for source, _ in plan)
            sample_plans = plan if sample_plans is None else sample_plans
        else:
            longest = trainer._lengths_host[rows].max(axis=(0, 2))
            widths.extend(bucket_for(int(w), trainer.buckets) for w in longest)
    used, counts = np.unique(np.asarray(widths), return_counts=True)
    share = {int(w): float(c) / len(widths) for w, c in zip(used, counts)}
    train_timed = sorted({int(used[0]), int(used[-1])})[:max_timed_widths]
    groups = sorted(scorer.groups, key=lambda g: g.width)
    score_timed = sorted({groups[-1].width, groups[0].width}, reverse=True)[:max_timed_score_widths]
    _logger.info("LM proxy: estimating the cost of the valuation: timing one optimiser step of %d fine-tunes at "
                 "training width%s %s and one scoring chunk at validation width%s %s (compilation measured apart)",
                 utility.n_slots, "s" if len(train_timed) > 1 else "", "/".join(map(str, train_timed)),
                 "s" if len(score_timed) > 1 else "", "/".join(map(str, score_timed)))
    timings = progress_bar(len(train_timed) + len(score_timed),
                           f"estimating the LM proxy's cost: {len(train_timed)} training and "
                           f"{len(score_timed)} scoring widths", unit="width", enabled=utility.progress)
    compile_times, step_times, chunk_times = [], {}, {}
    retimed = {"train": 0, "score": 0}
    with interrupt.cooperative():
        slots = jax.tree_util.tree_map(jnp.copy, trainer._fresh)  # _step donates its state
        active = jnp.ones(utility.n_slots, bool)
        lr_scale = jnp.float32(trainer.lr_scale)
        for width in train_timed:
            if trainer.across_slots:  # a step of `width` rows shared by the slots, cut from the widest sampled plan
                widest = max(sample_plans, key=lambda step: step[0].shape[0])
                source = np.resize(widest.source, (width, widest.source.shape[1]))
                segment, choice = np.resize(widest.segment, source.shape), np.resize(widest.choice, source.shape)
                row_slot = np.resize(widest.row_slot, (width, widest.row_slot.shape[1]))
            elif trainer.packing:  # a step of `width` packed rows, cut from the widest sampled plan
                source, segment = max(sample_plans, key=lambda step: step[0].shape[1])
                source = np.resize(source, (source.shape[0], width, source.shape[2]))
                segment = np.resize(segment, source.shape)
            else:
                row = jnp.asarray(sample_rows[:, 0])

            def step(slots=slots):
                if trainer.across_slots:
                    return trainer._shared_step(trainer.base_state, slots, trainer._data, source, segment, row_slot,
                                                choice, active, lr_scale, n_rows=width)
                if trainer.packing:
                    return trainer._packed_step(trainer.base_state, slots, trainer._data, source, segment,
                                                active, lr_scale, n_rows=width)
                return trainer._step(trainer.base_state, slots, trainer._data, row, active, lr_scale,
                                     width=width)

            (slots, _), total, compiling = _timed_first_call(step)
            compile_times.append(compiling)
            step_times[width] = max(total - compiling, 0.0)
            if step_times[width] < _RETIME_BELOW_S:  # short: the first call's one-time costs, times `steps`, dominate
                (slots, _), total, compiling = _timed_first_call(lambda: step(slots))
                step_times[width] = max(total - compiling, 0.0)
                retimed["train"] += 1
            timings.update()
            interrupt.check()
        lora = trainer._fresh.lora
        for group in groups:
            if group.width not in score_timed:
                continue
            rows = jnp.asarray(group.rows[:1])
            def chunk(rows=rows, group=group):
                return scorer._score_group(scorer.base_state, lora, scorer._data, rows, width=group.width)

            _, total, compiling = _timed_first_call(chunk)
            compile_times.append(compiling)
            chunk_times[group.width] = max(total - compiling, 0.0)
            if chunk_times[group.width] < _RETIME_BELOW_S:  # short: time a second call (see the training widths)
                _, total, compiling = _timed_first_call(chunk)
                chunk_times[group.width] = max(total - compiling, 0.0)
                retimed["score"] += 1
            timings.update()
            interrupt.check()
    timings.close()
    if len(chunk_times) == 1:  # one scoring width timed: the others in proportion to their width
        (timed_width, timed_seconds), = chunk_times.items()
        chunk_times[0] = 0.0
        chunk_times.setdefault(timed_width, timed_seconds)

    def interpolate(table: dict[int, float], width: int) -> float:
        xs = sorted(table)
        return float(np.interp(width, xs, [table[x] for x in xs])) if len(xs) > 1 else table[xs[0]] * 1.0

    step_seconds = {w: interpolate(step_times, w) for w in share}
    train_round = recipe.steps * sum(share[w] * step_seconds[w] for w in share)
    score_round = sum(len(g.rows) * interpolate(chunk_times, g.width) for g in groups)
    n_compiles = len(share) + len(groups)
    compile_mean = float(np.mean(compile_times)) if compile_times else 0.0
    cost = {
        "seconds_per_round": train_round + score_round, "seconds_training_round": train_round,
        "seconds_scoring_round": score_round, "seconds_compile": compile_mean * n_compiles,
        "seconds_step": step_seconds, "step_width_share": share,
        "timed": {"train_widths": train_timed, "score_widths": score_timed,
                  "seconds_compile_each": compile_times, "retimed": retimed},
        "seconds_compile_mean": compile_mean, "n_score_programs": len(groups),
        "n_slots": utility.n_slots, "steps": recipe.steps, "n_score_chunks": int(sum(len(g.rows) for g in groups)),
        "seconds_measuring": time.perf_counter() - begin,
    }
    _logger.info("LM proxy estimate: a round of %d fine-tunes (%d steps, widths %s) and their scoring "
                 "(%d chunks) takes about %s (training %s, scoring %s); compiling %d widths about %s "
                 "(measured in %s)", utility.n_slots, recipe.steps, "/".join(map(str, sorted(share))),
                 cost["n_score_chunks"], format_duration(train_round + score_round),
                 format_duration(train_round), format_duration(score_round), n_compiles,
                 format_duration(cost["seconds_compile"]), format_duration(cost["seconds_measuring"]))
    return cost


def cheaper_options(utility, n_evaluations: int, n_permutations: int, budget_seconds: float
                    ) -> list[tuple[str, float]]:
    """Settings that would bring the value stage within ``budget_seconds``, each with its estimated seconds
    (from :meth:`estimate_cost`'s model: rounds x (steps x step time + scoring chunks x chunk time) +
    compilation): fewer permutations, fewer ``steps``, a shorter ``max_length`` (step time interpolated in
    the width), fewer validation items (``max_validation``), and several of them at once when no single one
    fits. Returns ``[]`` when the run already fits."""
    cost = utility.estimate_cost()
    cfg = utility.config
    compile_s = cost.get("seconds_compile_run", cost["seconds_compile"])  # the run's programs (estimate_run_seconds)
    train, score = cost["seconds_training_round"], cost["seconds_scoring_round"]
    share, step_s = cost["step_width_share"], cost["seconds_step"]
    per_permutation = max(int(n_evaluations) - 2, 1) / max(int(n_permutations), 1)

    def total(permutations=n_permutations, steps=cfg.steps, width=None, items=None) -> float:
        counted = cost.get("rounds")  # the engine's own count for n_permutations (estimate_run_seconds)
        if counted:  # U(full)'s round, then the rest in proportion to the permutations
            rounds = 1 + -(-(int(counted) - 1) * int(permutations) // max(int(n_permutations), 1))
        else:
            rounds = -(-int(per_permutation * permutations + 2) // utility.n_slots)
        # the counted rounds as full rounds (on a CPU idle slots cost nothing: estimate_run_seconds), in proportion
        train_rounds = cost.get("full_rounds_training", counted or rounds) * rounds / max(counted or rounds, 1)
        score_rounds = cost.get("full_rounds_scoring", counted or rounds) * rounds / max(counted or rounds, 1)
        train_round = train * steps / cfg.steps
        if width is not None:  # every step at most `width` wide: step time interpolated (linear) in the width
            xs = sorted(step_s)
            scale = sum(share[w] * (np.interp(min(w, width), xs, [step_s[x] for x in xs]) if len(xs) > 1
                                    else step_s[w] * min(w, width) / w) for w in share)
            train_round *= scale / max(sum(share[w] * step_s[w] for w in share), 1e-12)
        score_round = score * (min(items, utility.validation.n_items) / utility.validation.n_items if items else 1.0)
        return train_rounds * train_round + score_rounds * score_round + compile_s

    if total() <= budget_seconds:
        return []
    options: list[tuple[str, float]] = []
    fits = lambda seconds: seconds <= budget_seconds  # noqa: E731
    for p in range(int(n_permutations) - 1, 0, -1):
        if fits(total(permutations=p)):
            options.append((f"--permutations {p}", total(permutations=p)))
            break
    for steps in sorted({max(1, cfg.steps // d) for d in (2, 4, 10)} - {cfg.steps}, reverse=True):
        if fits(total(steps=steps)):
            options.append((f"--proxy-option steps={steps}", total(steps=steps)))
            break
    widths = [w for w in sorted(share, reverse=True) if w < max(share)] + [64]
    for width in dict.fromkeys(widths):
        if width >= 16 and fits(total(width=width)):
            options.append((f"--proxy-option max_length={width}", total(width=width)))
            break
    n_items = utility.validation.n_items
    for items in (n_items // 2, n_items // 4, 50, 20):
        if 1 <= items < n_items and fits(total(items=items)):
            options.append((f"--proxy-option max_validation={items}", total(items=items)))
            break
    if not options:  # nothing alone: the cheapest combination that is still a valuation
        for p in range(int(n_permutations), 0, -1):
            seconds = total(permutations=p, steps=max(1, cfg.steps // 4), width=64, items=min(n_items, 50))
            if fits(seconds):
                options.append((f"--permutations {p} --proxy-option steps={max(1, cfg.steps // 4)} "
                                f"--proxy-option max_length=64 --proxy-option max_validation={min(n_items, 50)}",
                                seconds))
                break
    return options
