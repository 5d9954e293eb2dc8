"""Batched LoRA fine-tunes (shed_jax.lm.finetune) and prompt formats (shed_jax.lm.prompts).

A tiny random Llama (built through the model module from NumPy weights) and a word-level tokenizer built
offline. The batched trainer is checked against a plain, unvmapped, unbucketed reference loop written here.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from shed_jax.lm import finetune
from shed_jax.lm import prompts as P
from shed_jax.lm.finetune import FinetuneRecipe, SlotTrainer, sequence_loss
from shed_jax.lm.load import decoder_from_weights
from shed_jax.lm.model import DecoderConfig
from shed_jax.lm.scoring import target_logprob_sums

WORDS = ("the a cat dog sat on mat is red blue green what colour sky grass answer with letter of correct choice "
         "user assistant system below an instruction that describes task write response appropriately completes "
         "request chat between curious and artificial intelligence gives helpful detailed polite answers to "
         "questions name animal big small sun moon yes no one two three four").split()
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    """A word-level fast tokenizer (no download): specials, letters A-H, a small word list, punctuation."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = SPECIAL + list("ABCDEFGH") + WORDS + [".", ",", ":", "#", "'", "?", "###", "USER", "ASSISTANT",
                                                        "Below", "A", "Answer"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=SPECIAL[4:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(vocab_size: int, *, num_layers: int = 2) -> DecoderConfig:
    return DecoderConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_layers=num_layers,
                         num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6)


def tiny_weights(config: DecoderConfig, seed: int = 0) -> dict:
    """Random float32 weights in the stacked layout (std 0.1, norms near 1)."""
    rng = np.random.default_rng(seed)
    shapes = config.lora_shapes()
    n_layers, hidden = config.num_layers, config.hidden_size

    def normal(*shape, std=0.1):
        return (std * rng.normal(size=shape)).astype(np.float32)

    blocks = {name: normal(n_layers, *shape) for name, shape in shapes.items()}
    blocks["attn_norm"] = (1 + normal(n_layers, hidden)).astype(np.float32)
    blocks["mlp_norm"] = (1 + normal(n_layers, hidden)).astype(np.float32)
    weights = {"embed_tokens": normal(config.vocab_size, hidden, std=0.5), "blocks": blocks,
               "norm": (1 + normal(hidden)).astype(np.float32)}
    if not config.tie_word_embeddings:
        weights["lm_head"] = normal(hidden, config.vocab_size, std=0.3)
    return weights


def tiny_model(vocab_size: int, *, seed: int = 0, dtype=jnp.float32, num_layers: int = 2):
    config = tiny_config(vocab_size, num_layers=num_layers)
    return decoder_from_weights(config, tiny_weights(config, seed), dtype=dtype, param_dtype=dtype)


def random_lora(config: DecoderConfig, *, rank: int, seed: int, b_std: float = 0.05):
    """An adapter with random ``a`` and ``b`` (NumPy, no compilation): unlike ``init_lora``'s ``b = 0``, it changes
    the model, and every parameter gets a gradient from the first step."""
    rng = np.random.default_rng(seed)
    adapter = {}
    for target, (d_in, d_out) in config.lora_shapes().items():
        bound = 1.0 / np.sqrt(d_in)
        adapter[target] = {"a": jnp.asarray(rng.uniform(-bound, bound, (config.num_layers, d_in, rank)), jnp.float32),
                           "b": jnp.asarray(b_std * rng.normal(size=(config.num_layers, rank, d_out)), jnp.float32)}
    return adapter


PROMPTS = ["what colour is the sky ?", "name a big animal", "what colour is grass ?", "the cat sat on the mat",
           "name a small animal", "what is one and two ?", "the sun is big", "the moon is small ?"]
RESPONSES = ["blue", "the dog is big", "green", "yes the cat sat", "a cat", "three", "yes", "no the moon is big"]


@pytest.fixture(scope="module")
def setup():
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    table = P.encode_instructions(tokenizer, PROMPTS, RESPONSES, prompt_format="alpaca", max_length=48)
    graphdef, state = nnx.split(model)

    def loss(lora, ids, lengths, targets, weights, logits_chunk=8, remat=False):
        return sequence_loss(lora, graphdef, state, ids, lengths, targets, weights, lora_scale=2.0,
                             logits_chunk=logits_chunk, remat=remat)

    return dict(tokenizer=tokenizer, model=model, table=table, graphdef=graphdef, state=state,
                lora0=random_lora(model.config, rank=4, seed=3), loss=loss,
                loss_jit=jax.jit(loss, static_argnames=("logits_chunk", "remat")),
                grad_jit=jax.jit(jax.grad(loss)))


RECIPE = FinetuneRecipe(steps=4, learning_rate=5e-3, warmup_steps=1, batch_size=3, lr_schedule="linear",
                        weight_decay=0.01, max_grad_norm=1.0, lora_scale=2.0, logits_chunk=8, remat=True)


def reference_finetune(setup, members, seed, recipe=RECIPE):
    """One fine-tune, no vmap, no buckets (every step at the table's full width), the same minibatches."""
    table = setup["table"]
    schedule = finetune.minibatch_schedule(members, steps=recipe.steps, batch_size=recipe.batch_size,
                                           rng=finetune.coalition_rng(members, seed))
    optimizer = finetune.make_optimizer(recipe)
    lora = setup["lora0"]
    opt_state = optimizer.init(lora)
    update = jax.jit(optimizer.update)
    for rows in schedule:
        grads = setup["grad_jit"](lora, *_batch(table, rows))
        updates, opt_state = update(grads, opt_state, lora)
        lora = optax.apply_updates(lora, updates)
    return lora


def _batch(table, rows, width=None):
    width = table.width if width is None else width
    return (jnp.asarray(table.ids[rows, :width]), jnp.asarray(table.lengths[rows]),
            jnp.asarray(table.targets[rows, :width]), jnp.asarray(table.target_weights[rows, :width]))


def _slot(tree, index):
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def _max_rel_diff(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-12)) for x, y in zip(leaves_a, leaves_b))


COALITIONS = [np.array([0, 1, 2]), np.array([3]), np.array([1, 4, 5, 6, 7])]


@pytest.fixture(scope="module")
def trainer(setup):
    # packed (the default) into rows of twice the table's width, so that rows hold 2-3 sequences; one width
    return SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=3,
                       lora_init=setup["lora0"], buckets=(2 * setup["table"].width,))


def _travel_rel_diff(got, expected, start):
    """max over leaves of |got - expected| / |expected - start| (Frobenius): the disagreement relative to how far
    training moved the adapter. Adam normalises each coordinate, so a coordinate whose gradient is at float32
    round-off level can step by up to the learning rate either way; a max-abs criterion would measure that noise,
    the norm of the whole update does not."""
    pairs = zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(start))
    return max(float(jnp.linalg.norm(g - e) / jnp.linalg.norm(e - s)) for g, e, s in pairs)


def test_batched_finetunes_equal_single_finetunes(setup, trainer):
    stacked = trainer.train(COALITIONS, seed=7).lora
    for slot, members in enumerate(COALITIONS):
        reference = reference_finetune(setup, members, seed=7)
        assert _travel_rel_diff(_slot(stacked, slot), reference, setup["lora0"]) < 1e-3
        # and they actually moved away from the initial adapter
        assert _max_rel_diff(_slot(stacked, slot), setup["lora0"]) > 1e-2
    losses = np.asarray(trainer.last_losses)
    assert losses.shape == (RECIPE.steps, 3) and np.all(np.isfinite(losses))
    # the default packs across slots with rows that mix slots: some row holds sequences of two coalitions
    assert trainer.across_slots and trainer.slots_per_row == 2
    plan = trainer.shared_plan(trainer.schedules(COALITIONS, 7), np.ones(3, bool))
    assert any(len(set(step.row_slot[r, step.choice[r][step.segment[r] > 0]])) == 2
               for step in plan for r in range(step.source.shape[0]))


def _step_shapes(trainer, member_lists, seed):
    """The row counts of the steps of one :meth:`SlotTrainer.train` call (packed across slots: the shared rows)."""
    rows = trainer.schedules(member_lists, seed)
    active = np.zeros(trainer.n_slots, bool)
    active[: len(member_lists)] = [len(m) > 0 for m in member_lists]
    if trainer.across_slots:
        return {step.source.shape[0] for step in trainer.shared_plan(rows, active)}
    return {source.shape[1] for source, _ in trainer.packed_plan(rows, active)}


def test_no_retrace_and_slot_placement_does_not_matter(setup, trainer):
    """New coalitions compile nothing new: each step shape (row count) is traced once, whatever the coalitions."""
    first = trainer.train(COALITIONS, seed=7).lora
    coalition_two = _slot(first, 2)
    seen = _step_shapes(trainer, COALITIONS, 7)
    traces = trainer.n_traces
    # the same coalition in another slot, next to other companions; one slot left empty
    moved_members = [np.array([7, 6, 5, 4, 1]), np.array([0, 2])]
    new_shapes = _step_shapes(trainer, moved_members, 7) - seen
    moved = trainer.train(moved_members, seed=7).lora
    assert trainer.n_traces == traces + len(new_shapes)   # packed across slots: fewer slots may mean fewer rows
    seen |= new_shapes
    traces = trainer.n_traces
    assert _travel_rel_diff(_slot(moved, 0), coalition_two, setup["lora0"]) < 1e-3
    # the empty slot holds the initial adapter
    assert _max_rel_diff(_slot(moved, 2), setup["lora0"]) == 0.0
    # a different seed gives different minibatches, hence a different adapter
    new_shapes = _step_shapes(trainer, [np.array([7, 6, 5, 4, 1])], 8) - seen
    other_seed = trainer.train([np.array([7, 6, 5, 4, 1])], seed=8).lora
    assert _travel_rel_diff(_slot(other_seed, 0), coalition_two, setup["lora0"]) > 0.1
    assert trainer.n_traces == traces + len(new_shapes)
    traces = trainer.n_traces
    trainer.train(COALITIONS, seed=7)       # every shape seen now: nothing is traced again
    trainer.train(moved_members, seed=7)
    assert trainer.n_traces == traces


@pytest.mark.slow  # one more compilation (~20-35 s here); the stacked step is also covered end to end above
def test_stacked_gradient_equals_single_gradient(setup):
    table = setup["table"]
    keys = jax.random.split(jax.random.key(11), 3)
    adapters = [jax.tree_util.tree_map(lambda x, k=k: x + 0.05 * jax.random.normal(k, x.shape), setup["lora0"])
                for k in keys]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *adapters)
    rows = np.array([[0, 1, 2], [2, 3, 7], [4, 6, 5]])
    batch = _batch(table, rows)
    stacked_grads = jax.jit(jax.vmap(jax.grad(setup["loss"])))(stacked, *batch)
    for i, adapter in enumerate(adapters):
        expected = setup["grad_jit"](adapter, *_batch(table, rows[i]))
        assert _max_rel_diff(_slot(stacked_grads, i), expected) < 1e-5


def test_packed_and_padded_finetunes_agree(setup, trainer):
    """The default (packed) trainer and a padded one fine-tune the same coalitions to the same adapters and losses
    (float32; losses to rtol 1e-5, adapters to 1e-3 of the distance travelled, as the batched-vs-single test)."""
    assert trainer.packing
    padded = SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=3,
                         lora_init=setup["lora0"], buckets=(setup["table"].width,), packing=False)
    packed_lora = jax.tree_util.tree_map(np.asarray, trainer.train(COALITIONS, seed=7).lora)
    packed_losses = np.asarray(trainer.last_losses)
    padded_lora = padded.train(COALITIONS, seed=7).lora
    np.testing.assert_allclose(packed_losses, np.asarray(padded.last_losses), rtol=1e-5)
    for slot in range(len(COALITIONS)):
        assert _travel_rel_diff(_slot(packed_lora, slot), _slot(padded_lora, slot), setup["lora0"]) < 1e-3
    # packing did pack: several sequences share a row at every step
    rows = trainer.schedules(COALITIONS, seed=7)
    plan = trainer.packed_plan(rows, np.ones(3, bool))
    assert max(source.shape[1] for source, _ in plan) < RECIPE.batch_size
    assert all(segment.max() >= 2 for _, segment in plan)


@pytest.mark.slow  # two more compilations (~100 s under load here); the default trainer (packed across slots) is
# also checked against separate fine-tunes by test_batched_finetunes_equal_single_finetunes
@pytest.mark.parametrize("slot_batch, slots_per_row", [(1, 1), (3, 2)])
def test_packing_across_slots_equals_separate_finetunes(setup, slot_batch, slots_per_row):
    """Rows of all slots packed together (one slot per row, each row's adapter gathered by its slot, rows one at a
    time as on a CPU; or rows mixing two slots, each token's adapter its slot's, in chunks of 3 rows) fine-tune
    each coalition exactly as its own separate fine-tune (float32): the same losses as the per-slot packed trainer
    to rtol 1e-5, adapters to 1e-3 of the distance travelled. An empty slot keeps the initial adapter and
    contributes no rows. (Mixed rows one at a time: test_batched_finetunes_equal_single_finetunes.)"""
    shared = SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=4,
                         lora_init=setup["lora0"], buckets=(2 * setup["table"].width,), slot_batch=slot_batch,
                         pack_across_slots=True, slots_per_row=slots_per_row)
    assert shared.across_slots and shared.row_chunk == (slot_batch if slot_batch < 4 else 4 * RECIPE.batch_size)
    members = COALITIONS + [np.zeros(0, np.int64)]
    lora = shared.train(members, seed=7).lora
    losses = np.asarray(shared.last_losses)
    for slot, coalition in enumerate(COALITIONS):
        reference = reference_finetune(setup, coalition, seed=7)
        assert _travel_rel_diff(_slot(lora, slot), reference, setup["lora0"]) < 1e-3
        assert _max_rel_diff(_slot(lora, slot), setup["lora0"]) > 1e-2
    assert _max_rel_diff(_slot(lora, 3), setup["lora0"]) == 0.0
    per_slot = SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=3,
                           lora_init=setup["lora0"], buckets=(2 * setup["table"].width,))
    per_slot.train(COALITIONS, seed=7)
    np.testing.assert_allclose(losses[:, :3], np.asarray(per_slot.last_losses), rtol=1e-5)
    assert np.all(losses[:, 3] == 0)
    # a step holds the rows of all active slots (not the most rows one slot needs x slots), padded to a bucket
    rows = shared.schedules(members, seed=7)
    active = np.array([True, True, True, False])
    plan = shared.shared_plan(rows, active)
    separate = per_slot.packed_plan(rows[:3], np.ones(3, bool))
    mixed = 0
    for step, (alone, _) in zip(plan, separate):
        real = step.segment > 0
        token_slot = np.take_along_axis(step.row_slot, step.choice, axis=1)[real]
        assert set(token_slot.tolist()) <= {0, 1, 2} and real.any(axis=1).sum() <= 3 * alone.shape[1]
        assert step.source.shape[0] in shared.shared_row_buckets and step.source.shape[0] % shared.row_chunk == 0
        per_row = [len(set(step.row_slot[r, step.choice[r][real[r]]].tolist())) for r in range(len(real))]
        assert max(per_row) <= slots_per_row
        mixed += sum(n > 1 for n in per_row)
    assert (mixed > 0) == (slots_per_row > 1)


def test_packing_across_slots_needs_packing(setup):
    with pytest.raises(ValueError, match="pack_across_slots: needs packing"):
        SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=2, lora_init=setup["lora0"],
                    packing=False, pack_across_slots=True)


@pytest.mark.slow  # two more compilations (~75 s under load here)
def test_slot_batch_does_not_change_the_adapters(setup, trainer):
    """Slots vmapped all at once (the accelerator default) and in lax.map groups of 2 (3 slots: a group and a
    remainder) fine-tune to the same adapters as the CPU default (one slot at a time inside the step)."""
    assert trainer.slot_batch == 1  # the CPU default
    reference = jax.tree_util.tree_map(np.asarray, trainer.train(COALITIONS, seed=7).lora)
    reference_losses = np.asarray(trainer.last_losses)
    for slot_batch in (3, 2):
        other = SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=3,
                            lora_init=setup["lora0"], buckets=(2 * setup["table"].width,), slot_batch=slot_batch)
        lora = other.train(COALITIONS, seed=7).lora
        np.testing.assert_allclose(np.asarray(other.last_losses), reference_losses, rtol=1e-5)
        for slot in range(len(COALITIONS)):
            assert _travel_rel_diff(_slot(lora, slot), _slot(reference, slot), setup["lora0"]) < 1e-3
    with pytest.raises(ValueError, match="slot_batch"):
        SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=3,
                    lora_init=setup["lora0"], slot_batch=0)


def test_packed_loss_equals_padded_loss(setup):
    """One batch's loss from packed rows (segment ids, restarted positions) equals the padded batch's loss."""
    from shed_jax.lm.packing import first_fit_decreasing, packed_layout

    table, lora = setup["table"], setup["lora0"]
    rows = np.array([[1, 3, 6, 0]])
    width = table.width
    lengths = table.lengths[rows]
    placement = first_fit_decreasing(lengths, 2 * width)
    source, segment = packed_layout(rows, lengths, placement, n_rows=int(placement.n_rows[0]), width=2 * width,
                                    table_width=width, pad_index=table.ids.size)
    assert source.shape[1] < rows.shape[1]

    def flat(a):
        return jnp.asarray(np.concatenate([a.reshape(-1), np.zeros(1, a.dtype)]))[source[0]]

    columns = np.broadcast_to(np.arange(width, dtype=np.int32), table.ids.shape)
    packed = sequence_loss(lora, setup["graphdef"], setup["state"], flat(table.ids), None, flat(table.targets),
                           flat(table.target_weights), lora_scale=2.0, logits_chunk=8,
                           positions=flat(columns), segment_ids=jnp.asarray(segment[0]))
    padded = setup["loss_jit"](lora, *_batch(table, rows[0]))
    np.testing.assert_allclose(float(packed), float(padded), rtol=1e-5)


def test_retry_at_a_lower_rate_reuses_the_compiled_step(setup, trainer):
    """``with_learning_rate`` compiles nothing and equals a trainer whose recipe has that rate."""
    trainer.train(COALITIONS, seed=7)
    traces = trainer.n_traces
    retry = trainer.with_learning_rate(RECIPE.learning_rate / 10)
    slow = jax.tree_util.tree_map(np.asarray, retry.train(COALITIONS, seed=7).lora)
    assert trainer.n_traces == traces and retry.n_traces == traces
    reference = reference_finetune(setup, COALITIONS[2], seed=7,
                                   recipe=dataclasses.replace(RECIPE, learning_rate=RECIPE.learning_rate / 10))
    assert _travel_rel_diff(_slot(slow, 2), reference, setup["lora0"]) < 1e-3
    # the original trainer still trains at its own rate afterwards (shared slot storage)
    again = trainer.train(COALITIONS, seed=7).lora
    assert _travel_rel_diff(_slot(again, 2), reference, setup["lora0"]) > 0.1


def test_padding_does_not_change_loss(setup):
    table, loss = setup["table"], setup["loss_jit"]
    rows = np.array([1, 3, 6])
    width = int(table.lengths[rows].max())
    wide = 21
    padded = P.TokenTable(np.pad(table.ids, ((0, 0), (0, wide))), table.lengths,
                          np.pad(table.targets, ((0, 0), (0, wide))), np.pad(table.target_weights, ((0, 0), (0, wide))),
                          table.prompt_lengths, 0)
    lora = setup["lora0"]
    tight = float(loss(lora, *_batch(table, rows, width)))
    ids, lengths, targets, weights = _batch(padded, rows, width + wide)
    loose = float(loss(lora, ids, lengths, targets, weights))
    np.testing.assert_allclose(loose, tight, rtol=2e-6)
    # the batch loss is the token-weighted mean of the rows' own losses (other rows weighted 0)
    counts = np.asarray(weights).sum(axis=1)
    own_losses = [float(loss(lora, ids, lengths, targets, weights * (np.arange(3) == i)[:, None])) for i in range(3)]
    np.testing.assert_allclose(tight, np.dot(own_losses, counts) / counts.sum(), rtol=2e-6)
    # the shortest row alone at its own width (no padding at all)
    i = int(np.argmin(table.lengths[rows]))
    alone = float(loss(lora, *_batch(table, rows[i:i + 1], int(table.lengths[rows[i]]))))
    np.testing.assert_allclose(alone, own_losses[i], rtol=2e-6)


def _unmasked_logits(setup):
    """A jitted full forward with no attention mask: causal attention alone keeps each prefix independent of
    what follows, so sequences can be padded with anything at the end (an independent check of the masking)."""
    model = setup["model"]
    return jax.jit(lambda lora, ids: model.unembed(model(ids, lora=lora, lora_scale=2.0)))


def test_response_only_loss_by_hand(setup):
    """The loss counts exactly the response tokens: recomputed from full logits of each sequence."""
    tokenizer, lora = setup["tokenizer"], setup["lora0"]
    prompt_ids = [tokenizer(P.format_prompt(p, "alpaca", None), add_special_tokens=False)["input_ids"]
                  for p in PROMPTS[:3]]
    response_ids = [tokenizer(r + "</s>", add_special_tokens=False)["input_ids"] for r in RESPONSES[:3]]
    sequences = [[tokenizer.bos_token_id] + p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in sequences) + 3
    junk = np.random.default_rng(0).integers(0, len(tokenizer), size=(len(sequences), width))
    for i, sequence in enumerate(sequences):
        junk[i, : len(sequence)] = sequence
    log_probs = np.asarray(jax.nn.log_softmax(_unmasked_logits(setup)(lora, jnp.asarray(junk, jnp.int32)), -1),
                           np.float64)
    total, count = 0.0, 0
    for i, (sequence, p_ids) in enumerate(zip(sequences, prompt_ids)):
        for position in range(1 + len(p_ids), len(sequence)):  # response token at `position`, from position - 1
            total -= log_probs[i, position - 1, sequence[position]]
            count += 1
    table = setup["table"].take(np.arange(3))
    assert np.array_equal(table.target_weights.sum(axis=1), [len(r) for r in response_ids])
    got = setup["loss_jit"](lora, *_batch(setup["table"], np.arange(3)), logits_chunk=4)
    np.testing.assert_allclose(float(got), total / count, rtol=1e-5)
    # train_on_prompt counts every next token (all but the first token of each sequence)
    full = P.encode_instructions(tokenizer, PROMPTS[:3], RESPONSES[:3], prompt_format="alpaca", max_length=48,
                                 train_on_prompt=True)
    assert np.array_equal(full.target_weights.sum(axis=1), full.lengths - 1)


def test_target_logprob_sums_chunking(setup):
    model, table = setup["model"], setup["table"]
    ids, lengths, targets, weights = _batch(table, np.arange(len(table)))
    hidden = jax.jit(lambda i, n: model(i, attention_mask=jnp.arange(i.shape[1])[None, :] < n[:, None]))(ids, lengths)
    sums = jax.jit(lambda h, t, w, chunk: target_logprob_sums(model, h, t, w, logits_chunk=chunk),
                   static_argnames="chunk")
    results = [np.asarray(sums(hidden, targets, weights, chunk=c)) for c in (1, 7, 1000)]
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    np.testing.assert_allclose(results[0], results[2], rtol=1e-6)
    # against log_softmax of the full logits
    log_probs = np.asarray(jax.nn.log_softmax(model.unembed(hidden), -1), np.float64)
    picked = np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(results[0], (picked * np.asarray(weights)).sum(1), rtol=1e-5)


def test_minibatch_schedule_epochs_and_determinism():
    members = np.array([9, 2, 5, 7])
    first = finetune.minibatch_schedule(members, steps=4, batch_size=3, rng=finetune.coalition_rng(members, 0))
    again = finetune.minibatch_schedule(members[::-1], steps=4, batch_size=3,
                                        rng=finetune.coalition_rng(members[::-1], 0))
    assert np.array_equal(first, again)            # order of the member list does not matter
    flat = first.reshape(-1)
    for epoch in range(3):                          # 12 draws = 3 epochs of the 4 members
        assert sorted(flat[4 * epoch: 4 * epoch + 4].tolist()) == [2, 5, 7, 9]
    other = finetune.minibatch_schedule(members, steps=4, batch_size=3, rng=finetune.coalition_rng(members, 1))
    assert not np.array_equal(first, other)
    single = finetune.minibatch_schedule(np.array([4]), steps=2, batch_size=3, rng=finetune.coalition_rng([4], 0))
    assert np.all(single == 4)
    with pytest.raises(ValueError, match="members"):
        finetune.minibatch_schedule(np.array([], int), steps=1, batch_size=1, rng=np.random.default_rng(0))


def test_learning_rate_schedule():
    recipe = FinetuneRecipe(steps=10, learning_rate=1.0, warmup_steps=4, lr_schedule="linear")
    values = [float(finetune.learning_rate_schedule(recipe)(i)) for i in range(10)]
    np.testing.assert_allclose(values[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    assert values[4] == pytest.approx(1.0) and values[-1] < values[5] < values[4]
    constant = FinetuneRecipe(steps=5, learning_rate=0.1, warmup_steps=0, lr_schedule="constant")
    assert [float(finetune.learning_rate_schedule(constant)(i)) for i in range(5)] == pytest.approx([0.1] * 5)
    with pytest.raises(ValueError, match="warmup_steps"):
        FinetuneRecipe(steps=2, warmup_steps=3)
    with pytest.raises(ValueError, match="lr_schedule"):
        FinetuneRecipe(lr_schedule="step")


# ----------------------------------------------------------------------------------------- prompts
def test_prompt_formats():
    tokenizer = tiny_tokenizer()
    alpaca = P.format_prompt("name a cat", "alpaca", None)
    assert alpaca.startswith("Below is an instruction") and alpaca.endswith("### Instruction:\nname a cat\n\n"
                                                                             "### Response:\n")
    vicuna = P.format_prompt("name a cat", "vicuna", None)
    assert vicuna.endswith("USER: name a cat ASSISTANT:")
    chat = P.format_prompt("name a cat", "chat", tokenizer)
    assert chat == "<|im_start|>user\nname a cat<|im_end|>\n<|im_start|>assistant\n"
    assert P.response_affixes("chat", tokenizer) == ("", "<|im_end|>\n")
    assert P.response_affixes("vicuna", tokenizer) == (" ", "</s>")
    assert P.response_affixes("alpaca", tokenizer) == ("", "</s>")
    with pytest.raises(ValueError, match="prompt_format"):
        P.format_prompt("x", "llama2", None)
    no_template = tiny_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        P.format_prompt("x", "chat", no_template)


def test_encode_chat_pairs_and_truncation():
    tokenizer = tiny_tokenizer()
    table = P.encode_instructions(tokenizer, ["what colour is the sky ?"], ["blue"], prompt_format="chat",
                                  max_length=64)
    ids = table.ids[0, : table.lengths[0]].tolist()
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    blue = tokenizer.convert_tokens_to_ids("blue")
    assert ids[0] == im_start and ids[-2:] == [blue, im_end]      # chat: no BOS added, the turn is closed
    assert table.target_weights[0].nonzero()[0].tolist() == [len(ids) - 3, len(ids) - 2]
    assert table.targets[0, len(ids) - 3] == blue
    # truncation: the prompt loses its start, the response keeps at least max_length // 2 tokens
    long_prompt = " ".join(["the cat sat on the mat"] * 10)
    long_response = " ".join(["yes"] * 30)
    cut = P.encode_pairs(tokenizer, [long_prompt], [long_response], max_length=20)
    assert cut.lengths[0] == 20 and cut.target_weights[0].sum() == 10
    assert cut.prompt_lengths[0] == 10
    short = P.encode_pairs(tokenizer, [long_prompt], ["yes no"], max_length=20)
    assert short.lengths[0] == 20 and short.target_weights[0].sum() == 2


def test_letters_and_buckets():
    tokenizer = tiny_tokenizer()
    letters = P.letter_token_ids(tokenizer, 4, "chat")
    assert letters.tolist() == tokenizer.convert_tokens_to_ids(list("ABCD"))
    assert P.length_buckets(256) == (16, 24, 32, 48, 64, 96, 128, 192, 256)
    assert P.bucket_for(17, P.length_buckets(64)) == 24 and P.bucket_for(100, (16, 32)) == 32


@pytest.mark.slow  # five compilations (5 min under load 17 here)
def test_remat_and_logits_chunk_follow_the_compiled_memory(setup):
    """recipe_for_memory walks the ladder from no recompute / wide logits chunks down to block recompute / narrow
    chunks and stops at the first step whose compiled memory fits: a large budget keeps no recompute (one compile),
    a budget below every step takes the last rung; the chosen recipes fine-tune to the same adapters (float32, 1e-3
    of the distance travelled, as the batched-vs-single test)."""
    ladder = (("none", 16), ("block", 4))
    options = dict(n_slots=2, lora_init=setup["lora0"], buckets=(2 * setup["table"].width,))
    args = (setup["graphdef"], setup["state"], setup["table"], RECIPE)
    large, choice = finetune.recipe_for_memory(*args, budget_bytes=1 << 40, ladder=ladder, **options)
    assert (large.remat, large.logits_chunk) == ("none", 16) and choice["fits"] and len(choice["tried"]) == 1
    small, choice = finetune.recipe_for_memory(*args, budget_bytes=1, ladder=ladder, **options)
    assert (small.remat, small.logits_chunk) == ("block", 4) and not choice["fits"]
    (_, _, none_bytes), (_, _, block_bytes) = choice["tried"]
    assert block_bytes < none_bytes       # recomputing each block and narrower logits chunks need less memory
    middle, choice = finetune.recipe_for_memory(*args, budget_bytes=block_bytes, ladder=ladder, **options)
    assert (middle.remat, middle.logits_chunk) == ("block", 4) and choice["fits"]
    adapters = []
    for recipe in (large, small):
        trained = SlotTrainer(*args[:3], recipe, **options).train(COALITIONS[:2], seed=7).lora
        adapters.append(jax.tree_util.tree_map(np.asarray, trained))
    for slot in range(2):
        assert _travel_rel_diff(_slot(adapters[0], slot), _slot(adapters[1], slot), setup["lora0"]) < 1e-3


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed-per-slot"])
def test_empty_slots_skip_their_step_and_change_no_value(setup, packing):
    """One slot at a time (the CPU default) with the slots not packed together: slots of an empty coalition and
    slots past the round's coalitions skip their forward/backward (lax.cond) and keep the initial adapter with loss
    0, and the other slots get the adapters and losses they get when every slot is full (float32: losses to rtol
    1e-5, adapters to 1e-3 of the distance travelled, as the batched-vs-single test)."""
    trainer = SlotTrainer(setup["graphdef"], setup["state"], setup["table"], RECIPE, n_slots=4,
                          lora_init=setup["lora0"], buckets=(2 * setup["table"].width,), packing=packing,
                          pack_across_slots=False if packing else None)
    assert trainer.slot_batch == 1 and not trainer.across_slots and trainer.skip_inactive
    full = [COALITIONS[0], np.array([2, 5]), COALITIONS[2], np.array([6])]
    full_lora = jax.tree_util.tree_map(np.asarray, trainer.train(full, seed=7).lora)
    full_losses = np.asarray(trainer.last_losses)
    with_empty = [COALITIONS[0], np.zeros(0, np.int64), COALITIONS[2]]   # slot 1 empty, slot 3 unused
    lora = trainer.train(with_empty, seed=7).lora
    losses = np.asarray(trainer.last_losses)
    for slot in (0, 2):
        assert _travel_rel_diff(_slot(lora, slot), _slot(full_lora, slot), setup["lora0"]) < 1e-3
        np.testing.assert_allclose(losses[:, slot], full_losses[:, slot], rtol=1e-5)
    for slot in (1, 3):
        assert _max_rel_diff(_slot(lora, slot), setup["lora0"]) == 0.0
        assert np.all(losses[:, slot] == 0) and np.all(full_losses[:, slot] > 0)
