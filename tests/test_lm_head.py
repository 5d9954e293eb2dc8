"""The loss head (shed_jax.lm.scoring): bfloat16 logits with a float32 log-sum-exp when the model computes in
bfloat16, float32 otherwise; checked against float64 NumPy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shed_jax.lm.model import Decoder, DecoderConfig
from shed_jax.lm.scoring import head_dtype, picked_log_softmax, target_logprob_sums

CONFIG = DecoderConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                       num_kv_heads=2, head_dim=8)


def _log_softmax64(logits, targets):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    norm = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    return np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0] - norm


def test_bfloat16_logits_get_a_float32_log_sum_exp():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(8.0 * rng.standard_normal((6, 5, 512)), jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, 512, (6, 5)), jnp.int32)
    got = picked_log_softmax(logits, targets)
    assert got.dtype == jnp.float32
    # exact up to float32 arithmetic on the (already rounded) bfloat16 logits: no further bfloat16 rounding
    expected = _log_softmax64(np.asarray(logits.astype(jnp.float32)), targets)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-6, atol=2e-5)
    # a bfloat16 log-sum-exp would be off by ~ 2^-8 of the logits' scale; the gradient is a float32 softmax too
    grad = jax.grad(lambda x: jnp.sum(picked_log_softmax(x, targets)))(logits)
    assert grad.dtype == jnp.bfloat16
    softmax = np.exp(np.asarray(logits, np.float64) - np.log(np.exp(np.asarray(logits, np.float64)).sum(-1,
                                                                                                        keepdims=True)))
    onehot = np.eye(512)[np.asarray(targets)]
    np.testing.assert_allclose(np.asarray(grad, np.float64), onehot - softmax, atol=4e-3)


def test_head_dtype_follows_the_compute_dtype_and_float32_is_unchanged():
    f32 = Decoder(CONFIG, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    bf16 = Decoder(CONFIG, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert head_dtype(f32) == jnp.float32 and head_dtype(bf16) == jnp.bfloat16
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.standard_normal((3, 20, 32)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 512, (3, 20)), jnp.int32)
    weights = jnp.asarray(rng.random((3, 20)) < 0.7, jnp.float32)
    # float32: the float32 logits' log-softmax (float64 reference), chunked
    logits32 = np.asarray(f32.unembed(hidden), np.float64)
    expected = (_log_softmax64(logits32, targets) * np.asarray(weights)).sum(1)
    got32 = target_logprob_sums(f32, hidden, targets, weights, logits_chunk=7)
    np.testing.assert_allclose(np.asarray(got32), expected, rtol=1e-5)
    # bfloat16 model: the head's logits are bfloat16; the sums equal float64 log-softmax of those rounded logits
    logits16 = np.asarray(bf16.unembed(hidden, jnp.bfloat16).astype(jnp.float32), np.float64)
    got16 = target_logprob_sums(bf16, hidden, targets, weights, logits_chunk=7)
    np.testing.assert_allclose(np.asarray(got16), (_log_softmax64(logits16, targets) * np.asarray(weights)).sum(1),
                               rtol=1e-5)
