"""The Flax decoder on its own: config parsing, padding, LoRA (vs merged weights), vmap over adapters,
remat, dtypes and compilation. Parity with transformers lives in test_lm_load.py."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shed_jax.lm import LORA_TARGETS, Decoder, DecoderConfig, decoder_from_weights, init_lora, rope_inv_freq

TINY = DecoderConfig(
    vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=True,
)
F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)


def _model(config=TINY, seed=0, **kwargs):
    return Decoder(config, **{**F32, **kwargs}, rngs=nnx.Rngs(seed))


@jax.jit
def _jit_logits(graphdef, state, ids, attention_mask, lora, lora_scale):
    model = nnx.merge(graphdef, state)
    return model.unembed(model(ids, attention_mask=attention_mask, lora=lora, lora_scale=lora_scale))


def _logits(model, ids, *, attention_mask=None, lora=None, lora_scale=1.0):
    """Jitted ``model.unembed(model(ids, ...))`` (eager NNX calls are slow on CPU)."""
    graphdef, state = nnx.split(model)
    return _jit_logits(graphdef, state, ids, attention_mask, lora, lora_scale)


def _ids(shape, seed=0, vocab=TINY.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def _randomize_lora(lora, seed, std=0.3):
    """Adapters with random (non-zero) b, so that they change the model (numpy draws: eager
    jax.random compiles one kernel per shape, seconds on a small CPU)."""
    rng = np.random.default_rng(seed)
    return {name: {"a": ab["a"], "b": jnp.asarray(std * rng.standard_normal(ab["b"].shape), jnp.float32)}
            for name, ab in lora.items()}


# ----------------------------------------------------------------------------------- config


def _hf_llama(**extra):
    return {
        "model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "hidden_act": "silu", "max_position_embeddings": 128, "tie_word_embeddings": True, **extra,
    }


def test_from_hf_reads_transformers4_and_5_rope_keys():
    old = DecoderConfig.from_hf(_hf_llama(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}))
    new = DecoderConfig.from_hf(_hf_llama(rope_parameters={"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}))
    assert old == new
    assert old.rope_theta == 5e5 and dict(old.rope_scaling) == {"factor": 2.0, "rope_type": "linear"}
    assert old.head_dim == 8 and old.num_kv_heads == 2 and old.tie_word_embeddings
    hash(old)  # usable as a static argument
    default = DecoderConfig.from_hf(_hf_llama(rope_parameters={"rope_theta": 1e4, "rope_type": "default"}))
    assert default.rope_scaling is None


def test_from_hf_family_specifics():
    qwen = DecoderConfig.from_hf({**_hf_llama(), "model_type": "qwen2", "use_sliding_window": False,
                                  "sliding_window": 64, "layer_types": ["full_attention"] * 2})
    assert qwen.attention_bias and not qwen.attention_out_bias and qwen.sliding_window is None
    mistral = DecoderConfig.from_hf({**_hf_llama(), "model_type": "mistral", "sliding_window": 4096})
    assert mistral.sliding_window == 4096
    # Qwen2 sliding only from max_window_layers on: with max_window_layers >= num_layers none slides.
    qwen_no_slide = DecoderConfig.from_hf({**_hf_llama(), "model_type": "qwen2", "use_sliding_window": True,
                                           "sliding_window": 16, "max_window_layers": 2})
    assert qwen_no_slide.sliding_window is None
    llama_bias = DecoderConfig.from_hf(_hf_llama(attention_bias=True))
    assert llama_bias.attention_bias and llama_bias.attention_out_bias


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gemma"}, "unsupported model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "dynamic"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}, "sliding"),
    ({"model_type": "qwen2", "layer_types": ["full_attention", "sliding_attention"]}, "sliding"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_from_hf_rejects_unsupported(change, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig.from_hf(_hf_llama(**change))


def test_llama3_inv_freq_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    hf = LlamaConfig(hidden_size=512, num_attention_heads=4, rope_theta=500000.0, rope_scaling=scaling)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
    ours = rope_inv_freq(DecoderConfig.from_hf(hf.to_dict()))
    assert ours.shape == (64,)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)
    assert not np.allclose(ours, rope_inv_freq(dataclasses.replace(TINY, head_dim=128, rope_theta=500000.0)))


# ----------------------------------------------------------------------------------- forward


def test_shapes_dtypes_and_default_bfloat16_close_to_float32():
    ids = _ids((2, 7))
    model32 = _model()
    graphdef, state = nnx.split(model32)
    hidden = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st)(x), state, ids)
    assert hidden.shape == (2, 7, TINY.hidden_size) and hidden.dtype == jnp.float32
    logits = _logits(model32, ids)
    assert logits.shape == (2, 7, TINY.vocab_size) and logits.dtype == jnp.float32

    weights16 = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), nnx.to_pure_dict(state))
    model16 = decoder_from_weights(TINY, weights16)  # defaults: bfloat16 compute and parameters
    assert model16.embed_tokens[...].dtype == jnp.bfloat16 and model16.dtype == jnp.bfloat16
    logits16 = _logits(model16, ids)
    assert logits16.dtype == jnp.float32
    # bf16 has 8 mantissa bits: an error of ~1e-2 of the logit scale, far below its spread.
    error = float(jnp.max(jnp.abs(logits16 - logits)))
    assert 0 < error < 0.1 * float(jnp.std(logits))  # > 0: really computed in bf16


def test_causal_future_tokens_do_not_change_past_logits():
    model = _model()
    ids = _ids((1, 9), seed=9)
    changed = ids.at[0, 6:].set((ids[0, 6:] + 1) % TINY.vocab_size)
    a, b = _logits(model, ids), _logits(model, changed)
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(a[:, 6:] - b[:, 6:]))) > 1e-3


def test_right_padded_batch_matches_unpadded_rows():
    model = _model()
    lengths = [9, 4]
    rows = [_ids((1, n), seed=n) for n in lengths]
    padded = jnp.zeros((2, 9), jnp.int32)
    mask = jnp.zeros((2, 9), bool)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        padded = padded.at[i, :n].set(row[0])
        mask = mask.at[i, :n].set(True)
    padded = jnp.where(mask, padded, 7)  # arbitrary pad id: must not matter
    batch = _logits(model, padded, attention_mask=mask)
    assert bool(jnp.all(jnp.isfinite(batch)))
    for i, (row, n) in enumerate(zip(rows, lengths)):
        alone = _logits(model, row)
        np.testing.assert_allclose(batch[i, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_sliding_window_changes_only_positions_beyond_the_window():
    window = 3
    full = _model()
    windowed = _model(dataclasses.replace(TINY, sliding_window=window))
    ids = _ids((1, 9), seed=9)  # the shape of the causality test: one compilation fewer
    a, b = _logits(full, ids), _logits(windowed, ids)
    np.testing.assert_allclose(a[:, :window], b[:, :window], rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(a[:, window:] - b[:, window:]))) > 1e-3


def test_untied_head_and_unembed_of_any_leading_shape():
    model = _model(dataclasses.replace(TINY, tie_word_embeddings=False))
    assert model.lm_head is not None
    hidden = jnp.asarray(np.random.default_rng(1).standard_normal((3, TINY.hidden_size)), jnp.float32)
    expected = hidden @ model.lm_head[...]
    np.testing.assert_allclose(model.unembed(hidden), expected, rtol=1e-5, atol=1e-5)
    tied = _model(dataclasses.replace(TINY, tie_word_embeddings=True))
    assert tied.lm_head is None
    np.testing.assert_allclose(tied.unembed(hidden), hidden @ tied.embed_tokens[...].T, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------- LoRA


def test_init_lora_shapes_and_peft_bound():
    lora = init_lora(TINY, rank=4, key=jax.random.key(0))
    shapes = TINY.lora_shapes()
    assert set(lora) == set(LORA_TARGETS)
    for name, (d_in, d_out) in shapes.items():
        assert lora[name]["a"].shape == (TINY.num_layers, d_in, 4)
        assert lora[name]["b"].shape == (TINY.num_layers, 4, d_out)
        assert lora[name]["a"].dtype == jnp.float32 and not bool(jnp.any(lora[name]["b"]))
        bound = 1 / np.sqrt(d_in)
        assert float(jnp.max(jnp.abs(lora[name]["a"]))) <= bound
        assert float(jnp.max(jnp.abs(lora[name]["a"]))) > 0.5 * bound
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        init_lora(TINY, rank=2, targets=("lm_head",), key=jax.random.key(0))


def test_zero_lora_changes_nothing():
    model = _model()
    ids = _ids((2, 6))
    lora = init_lora(TINY, rank=4, key=jax.random.key(0))
    np.testing.assert_array_equal(_logits(model, ids, lora=lora, lora_scale=2.0), _logits(model, ids))


def test_lora_equals_merged_weights():
    scale = 0.5
    model = _model()
    lora = _randomize_lora(init_lora(TINY, rank=3, key=jax.random.key(0)), 1)
    ids = _ids((2, 6))
    with_lora = _logits(model, ids, lora=lora, lora_scale=scale)

    weights = nnx.to_pure_dict(nnx.state(model))
    for name, ab in lora.items():  # W' = W + scale * a @ b, per layer
        weights["blocks"][name] = weights["blocks"][name] + scale * jnp.einsum("lir,lro->lio", ab["a"], ab["b"])
    merged = decoder_from_weights(TINY, weights, **F32)
    expected = _logits(merged, ids)
    np.testing.assert_allclose(with_lora, expected, rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(with_lora - _logits(model, ids)))) > 1e-2


def test_lora_subset_of_targets():
    model = _model()
    ids = _ids((1, 5))
    lora = _randomize_lora(init_lora(TINY, rank=2, targets=("v_proj", "down_proj"), key=jax.random.key(2)),
                           3)
    out = _logits(model, ids, lora=lora)
    assert float(jnp.max(jnp.abs(out - _logits(model, ids)))) > 1e-3


def test_vmap_over_adapters_with_broadcast_base_and_grad_wrt_lora_only():
    """The caller's pattern: split once, merge inside jit(vmap(value_and_grad)) with the base state
    broadcast (in_axes=None) and remat on; values equal separate calls, adapters do not interact, and
    the LoRA gradients agree with central differences of separate forward calls.

    (The references are forward-only so that this test compiles one gradient program: on a 2-core CPU
    each costs ~5-10 s.)
    """
    model = _model()
    graphdef, state = nnx.split(model)
    ids = _ids((2, 6))
    mask = jnp.asarray([[True] * 6, [True] * 4 + [False] * 2])
    adapters = [_randomize_lora(init_lora(TINY, rank=2, key=jax.random.key(k)), 10 + k) for k in range(2)]

    def stack(trees):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

    def loss(lora, base_state):
        m = nnx.merge(graphdef, base_state)
        logits = m.unembed(m(ids, attention_mask=mask, lora=lora, lora_scale=0.7, remat=True))
        return jnp.mean(jnp.where(mask[..., None], logits, 0.0) ** 2)

    batched = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(0, None)))
    values, grads = batched(stack(adapters), state)
    assert values.shape == (2,) and values[0] != values[1]
    swapped_values, swapped_grads = batched(stack(adapters[::-1]), state)
    np.testing.assert_allclose(swapped_values, values[::-1], rtol=1e-6)
    for grad, swapped in zip(jax.tree.leaves(grads), jax.tree.leaves(swapped_grads)):
        np.testing.assert_allclose(swapped, grad[::-1], rtol=1e-5, atol=1e-9)

    single = jax.jit(loss)
    rng = np.random.default_rng(0)
    eps = 1e-2
    for k, lora in enumerate(adapters):
        np.testing.assert_allclose(values[k], single(lora, state), rtol=1e-5)
        direction = jax.tree.map(lambda x: rng.standard_normal(x.shape), lora)
        norm = np.sqrt(sum(np.sum(d ** 2) for d in jax.tree.leaves(direction)))
        direction = jax.tree.map(lambda d: jnp.asarray(d / norm, jnp.float32), direction)  # unit step
        plus = single(jax.tree.map(lambda x, d: x + eps * d, lora, direction), state)
        minus = single(jax.tree.map(lambda x, d: x - eps * d, lora, direction), state)
        finite_difference = float(plus - minus) / (2 * eps)
        analytic = sum(float(jnp.vdot(g[k], d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        assert abs(analytic) > 1e-6
        assert abs(finite_difference - analytic) <= 1e-2 * abs(analytic), (finite_difference, analytic)


def test_new_data_does_not_retrace():
    model = _model()
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def logits(state, ids):
        traces.append(1)
        m = nnx.merge(graphdef, state)
        return m.unembed(m(ids))

    logits(state, _ids((2, 6), seed=1))
    logits(state, _ids((2, 6), seed=2))
    assert len(traces) == 1


def test_decoder_from_weights_checks_names_and_shapes():
    weights = nnx.to_pure_dict(nnx.state(_model()))
    bad = {**weights, "blocks": {**weights["blocks"], "q_proj": weights["blocks"]["q_proj"][:, :-1]}}
    with pytest.raises(ValueError, match="q_proj"):
        decoder_from_weights(TINY, bad, **F32)
    missing = {k: v for k, v in weights.items() if k != "norm"}
    with pytest.raises(ValueError, match="missing"):
        decoder_from_weights(TINY, missing, **F32)


# ------------------------------------------------------------------------------------ packing


@jax.jit
def _jit_packed_logits(graphdef, state, ids, positions, segment_ids, lora):
    model = nnx.merge(graphdef, state)
    return model.unembed(model(ids, positions=positions, segment_ids=segment_ids, lora=lora))


@pytest.mark.parametrize("window", [None, 3])
def test_packed_rows_match_each_sequence_alone(window):
    """Sequences packed into rows (segment ids, positions restarting per segment) give each sequence's own
    logits (float32, rtol = atol = 1e-5): attention never crosses a segment, RoPE restarts at 0."""
    config = dataclasses.replace(TINY, sliding_window=window)
    model = _model(config)
    lora = _randomize_lora(init_lora(config, rank=2, key=jax.random.key(1)), seed=2)
    lengths = [[5, 3, 4], [9]]                      # two rows of width 12; the first ends in 0 padding tokens
    width = 12
    ids = np.full((2, width), 7, np.int32)
    positions = np.zeros((2, width), np.int32)
    segments = np.zeros((2, width), np.int32)
    rows = {}
    for r, row_lengths in enumerate(lengths):
        start = 0
        for s, n in enumerate(row_lengths):
            seq = np.asarray(_ids((1, n), seed=10 * r + s))[0]
            ids[r, start:start + n] = seq
            positions[r, start:start + n] = np.arange(n)
            segments[r, start:start + n] = s + 1
            rows[(r, s)] = (seq, start)
            start += n
    graphdef, state = nnx.split(model)
    packed = _jit_packed_logits(graphdef, state, jnp.asarray(ids), jnp.asarray(positions),
                                jnp.asarray(segments), lora)
    assert bool(jnp.all(jnp.isfinite(packed)))
    for (r, s), (seq, start) in rows.items():
        alone = _logits(model, jnp.asarray(seq)[None], lora=lora)[0]
        np.testing.assert_allclose(packed[r, start:start + len(seq)], alone, rtol=1e-5, atol=1e-5)
    # the segments matter: without them, the third sequence of row 0 sees the first two
    merged = _jit_packed_logits(graphdef, state, jnp.asarray(ids), jnp.asarray(positions),
                                jnp.asarray((segments > 0).astype(np.int32)), lora)
    assert float(jnp.max(jnp.abs(merged[0, 8:12] - packed[0, 8:12]))) > 1e-3


def test_attention_mask_and_segment_ids_exclude_each_other():
    model = _model()
    ids = _ids((1, 4))
    with pytest.raises(ValueError, match="attention_mask and segment_ids"):
        model(ids, attention_mask=jnp.ones((1, 4), bool), segment_ids=jnp.ones((1, 4), jnp.int32))


@pytest.mark.parametrize("remat", ["none", "block", "dots_saveable"])
def test_remat_policies_give_the_same_gradient(remat):
    model = _model()
    graphdef, state = nnx.split(model)
    lora = _randomize_lora(init_lora(TINY, rank=2, key=jax.random.key(3)), seed=4)
    ids = _ids((2, 6), seed=5)

    @jax.jit
    def grad(lora, state):
        def loss(lora, policy):
            m = nnx.merge(graphdef, state)
            return jnp.sum(m.unembed(m(ids, lora=lora, remat=policy)) ** 2) * 1e-3
        return jax.grad(loss)(lora, remat), jax.grad(loss)(lora, False)

    ours, reference = grad(lora, state)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat: unknown 'everything'"):
        _model()(_ids((1, 3)), remat="everything")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU (none here)")
def test_cudnn_packed_attention_under_vmap_scan_and_remat_matches_xla():
    """bf16, packed rows, vmapped over adapters, scanned layers, remat: gradients of cuDNN vs XLA attention."""
    config = dataclasses.replace(TINY, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16)
    xla = _model(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    graphdef_x, state = nnx.split(xla)
    cudnn = _model(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, attention_impl="cudnn")
    graphdef_c, _ = nnx.split(cudnn)
    lora = _randomize_lora(init_lora(config, rank=2, key=jax.random.key(0)), seed=1)
    stack = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x]), lora)
    ids = _ids((2, 64), seed=2, vocab=config.vocab_size)
    segments = jnp.asarray(np.repeat([[1] * 20 + [2] * 30 + [3] * 10 + [0] * 4], 2, axis=0), jnp.int32)
    positions = jnp.asarray(np.repeat([list(range(20)) + list(range(30)) + list(range(10)) + [0] * 4], 2, 0),
                            jnp.int32)

    def grads(graphdef):
        def loss(lora):
            m = nnx.merge(graphdef, state)
            hidden = m(ids, lora=lora, positions=positions, segment_ids=segments, remat="block")
            return jnp.mean(hidden[:, :60] ** 2)
        return jax.jit(jax.vmap(jax.value_and_grad(loss)))(stack)

    (loss_c, grad_c), (loss_x, grad_x) = grads(graphdef_c), grads(graphdef_x)
    np.testing.assert_allclose(np.asarray(loss_c, np.float32), np.asarray(loss_x, np.float32), rtol=2e-2)
    for a, b in zip(jax.tree.leaves(grad_c), jax.tree.leaves(grad_x)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=5e-2, atol=5e-3)


def test_attention_impl_auto_resolves_to_xla_here():
    """``auto`` is cuDNN only on an NVIDIA GPU in bf16/f16; on this CPU (and in float32 anywhere) it is XLA."""
    from shed_jax.lm.model import resolve_attention_impl

    assert resolve_attention_impl("auto", jnp.float32) is None
    if jax.default_backend() == "cpu":
        assert resolve_attention_impl("auto", jnp.bfloat16) is None
        assert _model(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, attention_impl="auto").attention_impl is None
    assert resolve_attention_impl("xla") is None and resolve_attention_impl("cudnn") == "cudnn"

    class FakeGpu:
        platform, device_kind = "gpu", "NVIDIA H200"

    class FakeCpu:
        platform, device_kind = "cpu", "cpu"

    assert resolve_attention_impl("auto", jnp.bfloat16, device=FakeGpu()) == "cudnn"
    assert resolve_attention_impl("auto", jnp.float32, device=FakeGpu()) is None
    assert resolve_attention_impl("auto", jnp.bfloat16, device=FakeCpu()) is None
    with pytest.raises(ValueError, match="attention_impl: unknown 'flash'"):
        resolve_attention_impl("flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU (none here)")
def test_attention_impl_auto_is_cudnn_on_an_nvidia_gpu():
    from shed_jax.lm.model import resolve_attention_impl

    assert resolve_attention_impl("auto", jnp.bfloat16) == "cudnn"


@pytest.mark.slow  # ~25 s of CPU (4 compilations); mixed rows are also covered by the default trainer test
def test_per_token_adapters_equal_each_sequence_alone_with_its_adapter():
    """Rows that mix coalitions (lora_index (B, K), lora_choice (B, T)): each packed sequence's logits and the
    gradients equal the sequence run alone (unpacked, positions 0..n-1) under its own adapter, in float32. Row 0 holds
    a sequence of adapter 2 then one of adapter 0; row 1 one sequence of adapter 1 (its second choice unused)."""
    model = _model()
    graphdef, state = nnx.split(model)
    adapters = [_randomize_lora(init_lora(TINY, rank=2, key=jax.random.key(7)), seed=s) for s in (1, 2, 3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *adapters)             # (L, 3, ...)
    seq_a, seq_b, seq_c = _ids((1, 5), seed=1)[0], _ids((1, 3), seed=2)[0], _ids((1, 6), seed=3)[0]
    pad = jnp.zeros(1, jnp.int32)
    ids = jnp.stack([jnp.concatenate([seq_a, seq_b, pad]), jnp.concatenate([seq_c, pad, pad, pad])])  # (2, 9)
    positions = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 0, 0, 0]], jnp.int32)
    segments = jnp.asarray([[1, 1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]], jnp.int32)
    index = jnp.asarray([[2, 0], [1, 1]], jnp.int32)
    choice = jnp.asarray([[0, 0, 0, 0, 0, 1, 1, 1, 0], [0] * 9], jnp.int32)

    @jax.jit
    def packed(stacked):
        m = nnx.merge(graphdef, state)
        return m.unembed(m(ids, positions=positions, segment_ids=segments, lora=stacked, lora_index=index,
                           lora_choice=choice))

    @jax.jit
    def alone(lora, seq):
        m = nnx.merge(graphdef, state)
        return m.unembed(m(seq[None], lora=lora))[0]

    got = packed(stacked)
    for (row, start, seq, adapter) in ((0, 0, seq_a, 2), (0, 5, seq_b, 0), (1, 0, seq_c, 1)):
        expected = alone(adapters[adapter], seq)
        np.testing.assert_allclose(got[row, start:start + len(seq)], expected, rtol=1e-5, atol=1e-5)
    # gradients: each adapter collects its own sequences' terms only
    weights = jnp.asarray(np.random.default_rng(4).standard_normal((2, 9, TINY.vocab_size)), jnp.float32)
    weights = weights * (segments > 0)[..., None]
    grad = jax.jit(jax.grad(lambda s: jnp.sum(packed(s) * weights)))(stacked)

    def alone_loss(lora, seq, w):
        return jnp.sum(alone(lora, seq) * w)

    expected = [jax.grad(alone_loss)(adapters[0], seq_b, weights[0, 5:8]),
                jax.grad(alone_loss)(adapters[1], seq_c, weights[1, 0:6]),
                jax.grad(alone_loss)(adapters[2], seq_a, weights[0, 0:5])]
    for slot in range(3):
        ours = jax.tree.map(lambda x, s=slot: x[:, s], grad)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected[slot])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_lora_choice_needs_an_index_per_row_and_slot():
    model = _model()
    lora = init_lora(TINY, rank=2, key=jax.random.key(7))
    stacked = jax.tree.map(lambda x: x[:, None], lora)
    ids = _ids((1, 4))
    with pytest.raises(ValueError, match="lora_choice: needs a"):
        model(ids, lora=stacked, lora_index=jnp.zeros(1, jnp.int32), lora_choice=jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="lora_index: a"):
        model(ids, lora=stacked, lora_index=jnp.zeros((1, 1), jnp.int32))
