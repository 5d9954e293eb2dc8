"""shed_jax.compare: batched (set x seed) fine-tunes equal separate ones, bootstrap intervals and paired
differences against a plain NumPy reference, overlap between test and training sets.

The model is the tiny random Llama of tests/test_lm_finetune.py (word-level tokenizer, built offline).
"""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shed_jax.compare import CompareConfig, EvalSet, TrainingSet, compare, compute_matched_steps, stats
from shed_jax.compare.overlap import find_overlap
from shed_jax.compare.train import SeededSlotTrainer
from shed_jax.errors import UserError
from test_lm_finetune import (COALITIONS, RECIPE, _slot, _travel_rel_diff, reference_finetune, setup,  # noqa: F401
                              tiny_config, tiny_tokenizer, tiny_weights)

# ------------------------------------------------------------------------------------------- statistics


def _reference_replicates(num, den, draws):
    """The bootstrap replicates written out: expand the counts to index lists, loop over replicates."""
    num, den = np.atleast_2d(num), np.atleast_2d(den)
    n_seeds = draws.seed_counts.shape[1]
    out = []
    for b in range(draws.n_boot):
        items = np.repeat(np.arange(num.shape[1]), draws.item_counts[b].astype(int))
        seeds = np.repeat(np.arange(n_seeds), draws.seed_counts[b].astype(int))
        values = []
        for s in seeds:
            row = 0 if num.shape[0] == 1 else s
            values.append(num[row, items].sum() / den[row, items].sum())
        out.append(np.mean(values))
    return np.asarray(out)


def _constructed(rng, n_seeds=3, n_items=40):
    difficulty = rng.normal(size=n_items)                                     # shared by both rows
    a = difficulty[None] + 0.1 * rng.normal(size=(n_seeds, n_items)) + 0.2      # item noise << item difficulty
    b = difficulty[None] + 0.1 * rng.normal(size=(n_seeds, n_items))
    tokens = rng.integers(1, 20, size=n_items).astype(np.float64)
    return a * tokens, np.broadcast_to(tokens, a.shape).copy(), b * tokens, np.broadcast_to(tokens, b.shape).copy()


def test_intervals_and_paired_differences_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    num_a, den_a, num_b, den_b = _constructed(rng)
    draws = stats.Draws.make(n_items=40, n_seeds=3, n_boot=300, seed=1)
    assert np.all(draws.item_counts.sum(axis=1) == 40) and np.all(draws.seed_counts.sum(axis=1) == 3)
    ref_a = _reference_replicates(num_a, den_a, draws)
    ref_b = _reference_replicates(num_b, den_b, draws)
    np.testing.assert_allclose(stats.replicates(num_a, den_a, draws), ref_a, rtol=1e-12)
    lo, hi = stats.interval(num_a, den_a, draws)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ref_a, [0.025, 0.975])), rel=1e-12)
    mean_a = np.mean([num_a[s].sum() / den_a[s].sum() for s in range(3)])
    assert stats.row_mean(num_a, den_a) == pytest.approx(mean_a, rel=1e-12)
    paired = stats.paired_difference(num_a, den_a, num_b, den_b, draws)
    mean_b = np.mean([num_b[s].sum() / den_b[s].sum() for s in range(3)])
    assert paired["diff"] == pytest.approx(mean_a - mean_b, rel=1e-12)
    assert paired["ci95"] == pytest.approx(list(np.quantile(ref_a - ref_b, [0.025, 0.975])), rel=1e-12)
    # one-seed rows (the untuned model) are broadcast over the seed draws
    np.testing.assert_allclose(stats.replicates(num_b[:1], den_b[:1], draws),
                               _reference_replicates(num_b[:1], den_b[:1], draws), rtol=1e-12)
    # pairing cancels the shared item difficulty: the paired interval is much narrower than the rows' own
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(paired["ci95"]) < 0.5 * width(stats.interval(num_b, den_b, draws))
    assert paired["ci95"][0] > 0  # a constructed +0.2 shift is found


def test_item_interval_has_the_binomial_width():
    """One seed, 0/1 items: the percentile bootstrap interval is about mean +- 1.96 sqrt(p (1 - p) / n)."""
    rng = np.random.default_rng(3)
    n = 2000
    right = (rng.random(n) < 0.3).astype(np.float64)[None]
    draws = stats.Draws.make(n_items=n, n_seeds=1, n_boot=4000, seed=0)
    lo, hi = stats.interval(right, np.ones_like(right), draws)
    p = right.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.08)
    assert (lo + hi) / 2 == pytest.approx(p, abs=0.2 * half)


def test_compute_matched_steps():
    sets = [TrainingSet("full", ["p"] * 100, ["r"] * 100), TrainingSet("shed", ["p"] * 10, ["r"] * 10),
            TrainingSet("random", ["p"] * 10, ["r"] * 10)]
    assert compute_matched_steps(sets, CompareConfig(batch_size=4)) == {"full": 3, "shed": 3, "random": 3}
    assert compute_matched_steps(sets, CompareConfig(batch_size=4, epochs=2.0, match="data")) == \
        {"full": 50, "shed": 5, "random": 5}
    assert compute_matched_steps(sets, CompareConfig(steps=7)) == {"full": 7, "shed": 7, "random": 7}
    with pytest.raises(UserError, match="--match"):
        CompareConfig(match="tokens")


def test_overlap_normalises_case_and_space():
    found = find_overlap(["What colour is  the SKY ?", "name a cat", "x"], {"a": ["what colour is the sky ?"],
                                                                             "b": ["x", "Name a CAT"]})
    assert found["a"].tolist() == [True, False, False] and found["b"].tolist() == [False, True, True]


# ------------------------------------------------------------------------------------ batched fine-tunes


def test_per_slot_seeds_equal_separate_reference_finetunes(setup):  # noqa: F811
    trainer = SeededSlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=3,
                                lora_init=setup["lora0"], buckets=(setup["table"].width,))
    member_lists = [COALITIONS[0], COALITIONS[2], COALITIONS[2]]
    trainer.slot_seeds = [11, 11, 12]
    stacked = trainer.train(member_lists, seed=0).lora
    for slot in (1, 2):  # one set under two seeds, each equal to its own unbatched reference fine-tune
        reference = reference_finetune(setup, member_lists[slot], seed=trainer.slot_seeds[slot])
        assert _travel_rel_diff(_slot(stacked, slot), reference, setup["lora0"]) < 1e-3
    # two seeds of a set larger than a batch draw other minibatches
    assert _travel_rel_diff(_slot(stacked, 1), _slot(stacked, 2), setup["lora0"]) > 0.05


PROMPTS = ["what colour is the sky ?", "name a big animal", "what colour is grass ?", "the cat sat on the mat",
           "name a small animal", "what is one and two ?", "the sun is big", "the moon is small ?",
           "what colour is the sun ?", "name a small animal that is red"]
RESPONSES = ["blue", "the dog is big", "green", "yes the cat sat", "a cat", "three", "yes", "no the moon is big",
             "red", "no"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from shed_jax.lm.load import decoder_from_weights

    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    model = decoder_from_weights(config, tiny_weights(config, seed=4), dtype=jnp.float32, param_dtype=jnp.float32)
    loaded = types.SimpleNamespace(model=model, tokenizer=tokenizer, config=config)
    sets = [TrainingSet("full", PROMPTS, RESPONSES), TrainingSet("shed", PROMPTS[:4], RESPONSES[:4]),
            TrainingSet("random", PROMPTS[4:8], RESPONSES[4:8])]
    mc = EvalSet("mc", "mc.jsonl", "multiple_choice",
                 ["what colour is the moon ?", "name a red animal", "what is two and two ?", "is the sky big ?"],
                 choices=[["blue", "red", "green"], ["cat", "dog"], ["one", "two", "three", "four"], ["yes", "no"]],
                 answers=np.array([0, 1, 3, 0]))
    inst = EvalSet("inst", "inst.jsonl", "instruction",
                   ["name a green animal", "what colour is the cat ?", "the dog sat on the mat", "WHAT colour is the sky ?"],
                   responses=["the cat is green", "red", "yes", "blue"])
    config = CompareConfig(steps=3, seeds=2, batch_size=2, max_length=48, prompt_format="alpaca", bootstrap=200,
                           learning_rate=5e-2, rank=4)
    return types.SimpleNamespace(loaded=loaded, sets=sets, evals=[mc, inst], config=config)


@pytest.fixture(scope="module")
def batched(tiny):
    """One batched comparison on the tiny model, shared by the tests below (compiling is most of the cost)."""
    return compare(tiny.sets, tiny.evals, tiny.config, loaded=tiny.loaded, source="tiny", keep_adapters=True)


def test_batched_comparison_schema(batched):
    assert batched["timing"]["rounds"] == 1
    evals = batched["evals"]
    assert [(e["name"], e["metric"], e["higher_is_better"]) for e in evals] == [
        ("mc", "mc_letter_accuracy", True), ("mc", "mc_choice_accuracy", True), ("inst", "loss", False)]
    rows = {r["train"]: r for r in evals[2]["rows"]}
    assert list(rows) == ["full", "shed", "random", "untuned"]
    assert rows["random"]["vs_random"] is None and rows["full"]["vs_full"] is None
    assert rows["shed"]["vs_random"]["diff"] == pytest.approx(rows["shed"]["mean"] - rows["random"]["mean"])
    assert rows["shed"]["vs_full"]["diff"] == pytest.approx(rows["shed"]["mean"] - rows["full"]["mean"])
    lo, hi = rows["shed"]["ci95"]
    assert lo <= rows["shed"]["mean"] <= hi and rows["untuned"]["records"] == 0
    assert len(rows["shed"]["per_seed"]) == 2 and len(rows["untuned"]["per_seed"]) == 1
    # fine-tuning on these records moved the held-out loss
    assert abs(rows["full"]["mean"] - rows["untuned"]["mean"]) > 1e-3
    assert batched["recipe"]["steps_per_set"] == {"full": 3, "shed": 3, "random": 3}
    # "WHAT colour is the sky ?" is the prompt of a record of full and of shed (case differs): counted, dropped
    assert evals[2]["overlap"] == {"per_set": {"full": 1, "shed": 1, "random": 0}, "items": 1, "excluded": True}
    assert evals[2]["n_items"] == 3 and evals[0]["n_items"] == 4


@pytest.mark.slow
def test_batched_comparison_equals_one_fine_tune_at_a_time(tiny, batched):
    import dataclasses

    one_by_one = compare(tiny.sets, tiny.evals, dataclasses.replace(tiny.config, slots=1), loaded=tiny.loaded,
                         source="tiny", keep_adapters=True)
    assert one_by_one["timing"]["rounds"] == 3 * 2  # the untuned model takes no round of its own
    init = batched["_adapters"][-1]  # the untuned slot holds the initial adapter
    for got, expected in zip(batched["_adapters"][:-1], one_by_one["_adapters"][:-1]):
        assert _travel_rel_diff(got, expected, init) < 1e-3
    for ev_a, ev_b in zip(batched["evals"], one_by_one["evals"]):
        for row_a, row_b in zip(ev_a["rows"], ev_b["rows"]):
            assert row_a["per_seed"] == pytest.approx(row_b["per_seed"], rel=1e-4, abs=1e-6)


def test_scores_match_a_direct_computation(tiny, batched):
    """The untuned model's held-out loss and letter accuracy, from full logits of unpadded sequences."""
    from shed_jax.compare.evals import prepare_metrics

    model = tiny.loaded.model
    inst = tiny.evals[1].subset(np.array([0, 1, 2]))  # the 4th item overlaps a training prompt (dropped)
    (loss_metric,) = prepare_metrics(inst, tiny.loaded.tokenizer, prompt_format="alpaca", max_length=48)
    table = loss_metric.validation.table
    total = tokens = 0.0
    for row in range(len(table)):
        n = int(table.lengths[row])
        logits = model.unembed(model(jnp.asarray(table.ids[row:row + 1, :n])))
        logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)[0]
        w = table.target_weights[row, :n]
        total += float(np.sum(w * np.take_along_axis(np.asarray(logp), table.targets[row, :n, None], -1)[:, 0]))
        tokens += float(w.sum())
    untuned = {e["metric"]: e["rows"][-1] for e in batched["evals"]}
    assert untuned["loss"]["train"] == "untuned"
    assert untuned["loss"]["mean"] == pytest.approx(-total / tokens, rel=1e-4)
    (letters, _) = prepare_metrics(tiny.evals[0], tiny.loaded.tokenizer, prompt_format="alpaca", max_length=48)
    v = letters.validation
    right = []
    for row in range(len(v.table)):
        n = int(v.table.lengths[row])
        logits = np.asarray(model.unembed(model(jnp.asarray(v.table.ids[row:row + 1, :n]))))[0, n - 1, v.letter_ids]
        logits = np.where(v.choice_mask[row], logits, -np.inf)
        right.append(int(np.argmax(logits)) == int(v.answers[row]))
    assert untuned["mc_letter_accuracy"]["mean"] == pytest.approx(np.mean(right))


@pytest.mark.slow
def test_overlapping_items_are_kept_when_asked(tiny):
    import dataclasses

    kept = compare(tiny.sets, tiny.evals[1:], dataclasses.replace(tiny.config, exclude_overlap=False),
                   loaded=tiny.loaded, source="tiny")
    assert kept["evals"][0]["n_items"] == 4 and kept["evals"][0]["overlap"]["excluded"] is False


def test_bad_sets_are_user_errors_before_any_work(tiny):
    every = EvalSet("all", "all.jsonl", "instruction", PROMPTS[:2], responses=RESPONSES[:2])
    with pytest.raises(UserError, match="every item of the test set overlaps"):
        compare(tiny.sets, [every], tiny.config, loaded=tiny.loaded, source="tiny")
    with pytest.raises(UserError, match="empty"):
        compare([TrainingSet("x", [], [])], tiny.evals, tiny.config, loaded=tiny.loaded)
    with pytest.raises(UserError, match="distinct"):
        compare([tiny.sets[0], tiny.sets[0]], tiny.evals, tiny.config, loaded=tiny.loaded)


def test_choice_accuracy_matches_a_direct_computation(tiny, batched):
    """mc_choice_accuracy of the untuned model: each choice's summed log-likelihood from full logits."""
    from shed_jax.compare.evals import prepare_metrics

    model = tiny.loaded.model
    (_, choices) = prepare_metrics(tiny.evals[0], tiny.loaded.tokenizer, prompt_format="alpaca", max_length=48)
    v = choices.validation
    scores = np.full((len(tiny.evals[0]), 4), -np.inf)
    for row in range(len(v.table)):
        n = int(v.table.lengths[row])
        logits = model.unembed(model(jnp.asarray(v.table.ids[row:row + 1, :n])))
        logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), -1))[0]
        picked = np.take_along_axis(logp, v.table.targets[row, :n, None], -1)[:, 0]
        scores[v.question_index[row], v.choice_position[row]] = float(np.sum(v.table.target_weights[row, :n] * picked))
    expected = np.mean(np.argmax(scores, axis=1) == tiny.evals[0].answers)
    untuned = {e["metric"]: e["rows"][-1] for e in batched["evals"]}
    assert untuned["mc_choice_accuracy"]["mean"] == pytest.approx(expected)


def test_shots_prefix_and_its_checks(tiny):
    from shed_jax.compare.evals import shots_prefix

    dev = EvalSet("dev", "dev.jsonl", "multiple_choice", ["one and one ?", "sky colour ?", "grass colour ?"],
                  choices=[["one", "two"], ["blue", "red"], ["red", "green"]], answers=np.array([1, 0, 1]))
    text = shots_prefix(dev, 2, seed=0)
    assert text.count("\nAnswer: ") == 2 and text.endswith("\n\n") and "A. " in text and "B. " in text
    assert shots_prefix(dev, 2, seed=0) == text                     # seeded
    assert "one and one ?\nA. one\nB. two\nAnswer: B" in shots_prefix(dev, 3, seed=0)
    with pytest.raises(UserError, match="--shots 4"):
        shots_prefix(dev, 4, seed=0)
    with pytest.raises(UserError, match="--shots-from"):
        compare(tiny.sets, tiny.evals, CompareConfig(shots=1), loaded=tiny.loaded)
