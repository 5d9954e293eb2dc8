"""Tests of shed_jax.proxies: the batched utility contract and the embedding-space proxy utility.

References are independent numpy float64 computations of the losses and of the validation metrics; the
batched (sorted, chunked, bucketed, vmapped) path is checked against the per-coalition loop.
"""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shed_jax.proxies import (
    BatchedUtility,
    BilinearParams,
    EmbeddingProxyConfig,
    EmbeddingProxyUtility,
    ValidationEmbeddings,
    as_mask_batch,
    bucket_sizes,
    embed_validation,
    infonce_grad,
    infonce_loss,
    spectral_grad,
    spectral_loss,
    spectral_stats,
    training_flops,
)

N_PLAYERS, DIM, N_VAL = 12, 16, 40
# the former defaults (spectral loss, adam, accuracy), pinned: most tests below exercise that path
SMALL = dict(objective="spectral", optimizer="adam", metric="accuracy", scale_learning_rate=0.0, rank=4, steps=8,
             learning_rate=0.05, min_bucket=6)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_params(rng, dim, rank, scale=0.3):
    return BilinearParams(jnp.asarray(scale * rng.normal(size=(dim, rank)), jnp.float32),
                          jnp.asarray(scale * rng.normal(size=(dim, rank)), jnp.float32),
                          jnp.asarray(scale * rng.normal(), jnp.float32))


def np_params(params):
    """float64 ``(U, V, cosine weight multiplier exp(log_scale))`` of BilinearParams or a (U, V[, s]) tuple."""
    u, v = (np.asarray(x, np.float64) for x in params[:2])
    log_scale = float(np.asarray(params[2], np.float64)) if len(params) > 2 else 0.0
    return u, v, np.exp(log_scale)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(42)
    prompts, responses = unit(rng.normal(size=(N_PLAYERS, DIM))), unit(rng.normal(size=(N_PLAYERS, DIM)))
    responses = unit(responses + 0.8 * prompts)  # some prompt/response structure
    questions = unit(rng.normal(size=(N_VAL, DIM)))
    choices = unit(rng.normal(size=(N_VAL, 4, DIM)) + 0.4 * questions[:, None, :])
    choice_mask = np.ones((N_VAL, 4), bool)
    choice_mask[::3, 3] = False  # ragged: some questions have 3 choices
    answers = rng.integers(0, 3, N_VAL)
    validation = ValidationEmbeddings.multiple_choice(questions, choices, answers, choice_mask)
    return prompts, responses, validation


@pytest.fixture(scope="module")
def utility_logprob(arrays):
    prompts, responses, validation = arrays
    return EmbeddingProxyUtility.from_arrays(prompts, responses, validation,
                                             EmbeddingProxyConfig(**{**SMALL, "metric": "logprob"}), seed=3)


@pytest.fixture(scope="module")
def utility_accuracy(arrays):
    prompts, responses, validation = arrays
    return EmbeddingProxyUtility.from_arrays(prompts, responses, validation, EmbeddingProxyConfig(**SMALL), seed=3)


def random_masks(rng, n_batch, n_players):
    sizes = rng.integers(0, n_players + 1, n_batch)
    sizes[:2] = (0, n_players)  # always include empty and full
    masks = np.zeros((n_batch, n_players), bool)
    for row, size in enumerate(sizes):
        masks[row, rng.permutation(n_players)[:size]] = True
    return masks


# ------------------------------------------------------------------------------------------------ numpy refs
def np_scores(params, alpha, left, right):
    """float64 bilinear scores ``alpha exp(log_scale) l.r + (l U).(r V)`` for all pairs of rows."""
    u, v, multiplier = np_params(params)
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    return alpha * multiplier * left @ right.T + (left @ u) @ (right @ v).T


def np_logsumexp(x, axis):
    top = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def np_validation(params, alpha, temperature, validation, metric):
    """Reference metric over a multiple-choice ValidationEmbeddings, float64."""
    u, v, multiplier = np_params(params)
    query = validation.query_emb.astype(np.float64)
    choices = validation.choice_emb.astype(np.float64)
    scores = alpha * multiplier * np.einsum("vd,vcd->vc", query, choices) + np.einsum("vr,vcr->vc", query @ u, choices @ v)
    if metric == "accuracy":
        masked = np.where(validation.choice_mask, scores, -np.inf)
        return float(np.mean(np.argmax(masked, axis=1) == validation.answers))
    items = np.arange(len(validation.answers))
    if metric == "margin":
        wrong = validation.choice_mask.copy()
        wrong[items, validation.answers] = False
        best_wrong = np.array([scores[i][wrong[i]].max() for i in items])
        return float(np.mean(scores[items, validation.answers] - best_wrong))
    logits = np.where(validation.choice_mask, scores / temperature, -np.inf)
    log_prob = logits - np_logsumexp(logits, 1)[:, None]
    right = log_prob[items, validation.answers]
    if metric == "prob":
        return float(np.mean(np.exp(right)))
    return float(np.mean(right))


# ------------------------------------------------------------------------------------------------ pieces
def test_bucket_sizes():
    assert bucket_sizes(1000) == (0, 16, 32, 64, 128, 256, 512, 1000)
    assert bucket_sizes(12, min_bucket=4) == (0, 4, 8, 12)
    assert bucket_sizes(12, min_bucket=6) == (0, 6, 12)
    assert bucket_sizes(3) == (0, 3)
    ladder = bucket_sizes(1000, ratio=2 ** 0.5)
    assert ladder[-1] == 1000 and all(a < b for a, b in zip(ladder, ladder[1:]))
    assert all(size % 8 == 0 for size in ladder[2:-1])
    with pytest.raises(ValueError):
        bucket_sizes(0)


@pytest.mark.parametrize("field,value", [("rank", -1), ("steps", -1), ("learning_rate", 0.0), ("temperature", 0),
                                         ("metric", "f1"), ("objective", "mse"), ("optimizer", "lion"),
                                         ("bucket_ratio", 1.0), ("chunk_size", 0), ("n_distractors", 0),
                                         ("weight_decay", -0.1), ("scale_learning_rate", -0.1),
                                         ("max_grad_norm", 0.0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        EmbeddingProxyConfig(**{field: value})


def test_infonce_loss_and_grad_match_numpy():
    rng = np.random.default_rng(0)
    n, dim, rank, alpha, temperature = 10, 8, 3, 0.7, 0.2
    prompts, responses = unit(rng.normal(size=(n, dim))), unit(rng.normal(size=(n, dim)))
    valid = np.arange(n) < 7  # last 3 rows are padding and must not matter
    prompts[7:], responses[7:] = 5.0, -3.0
    params = random_params(rng, dim, rank)
    scores = np_scores(params, alpha, prompts[:7], responses[:7]) / temperature
    expected = np.mean(np_logsumexp(scores, 1) - np.diag(scores))
    kwargs = dict(alpha=alpha, temperature=temperature)
    loss_fn = jax.jit(lambda *a, **k: infonce_loss(*a, **k, **kwargs))
    loss = loss_fn(params, prompts, responses, jnp.asarray(valid))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    gram = jnp.asarray(prompts) @ jnp.asarray(responses).T
    np.testing.assert_allclose(float(loss_fn(params, prompts, responses, jnp.asarray(valid), gram=gram)),
                               expected, rtol=1e-5)
    auto = jax.jit(jax.grad(lambda *a: infonce_loss(*a, **kwargs)))(params, prompts, responses, jnp.asarray(valid))
    grad_fn = jax.jit(lambda *a, **k: infonce_grad(*a, **k, **kwargs))
    manual = grad_fn(params, prompts, responses, jnp.asarray(valid), gram=gram)
    for a, m in zip(auto, manual):
        np.testing.assert_allclose(np.asarray(m), np.asarray(a), rtol=1e-4, atol=1e-6)
    # central finite difference of the float64 reference along a random direction
    direction = [rng.normal(size=(dim, rank)), rng.normal(size=(dim, rank)), rng.normal()]
    eps = 1e-5

    def ref(step):
        u, v, log_scale = (np.asarray(p, np.float64) + step * d for p, d in zip(params, direction))
        s = np_scores((u, v, log_scale), alpha, prompts[:7], responses[:7]) / temperature
        return np.mean(np_logsumexp(s, 1) - np.diag(s))

    numeric = (ref(eps) - ref(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(manual, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3)
    # no member: zero loss, zero gradient, no NaN
    none = jnp.zeros(n, bool)
    assert float(loss_fn(params, prompts, responses, none)) == 0.0
    assert all(np.all(np.asarray(g) == 0) for g in grad_fn(params, prompts, responses, none))


def test_spectral_loss_matches_numpy():
    rng = np.random.default_rng(1)
    n, dim, rank, alpha = 9, 8, 3, 0.8
    prompts, responses = unit(rng.normal(size=(n, dim))), unit(rng.normal(size=(n, dim)))
    valid = np.array([True] * 6 + [False] * 3)
    params = random_params(rng, dim, rank)
    scores = np_scores(params, alpha, prompts[:6], responses[:6])
    expected = -2.0 * np.trace(scores) / 6 + np.sum(scores ** 2) / 36
    stats = spectral_stats(jnp.asarray(prompts), jnp.asarray(responses), jnp.asarray(valid))
    assert float(stats.n_members) == 6.0
    np.testing.assert_allclose(float(spectral_loss(params, stats, alpha=alpha)), expected, rtol=1e-5)
    auto = jax.grad(spectral_loss)(params, stats, alpha=alpha)
    manual = spectral_grad(params, stats, alpha=alpha)
    for a, m in zip(auto, manual):
        np.testing.assert_allclose(np.asarray(m), np.asarray(a), rtol=1e-4, atol=1e-6)
    empty = spectral_stats(jnp.asarray(prompts), jnp.asarray(responses), jnp.zeros(n, bool))
    assert float(spectral_loss(params, empty, alpha=alpha)) == 0.0


def test_training_flops():
    assert training_flops(10, 4, 2, 3, "infonce") == 3 * (8 * 10 * 4 * 2 + 6 * 100 * 2)
    assert training_flops(10, 4, 2, 3, "spectral") == 6 * 10 * 16 + 3 * 12 * 16 * 2
    with pytest.raises(ValueError):
        training_flops(1, 1, 1, 1, "mse")


# ------------------------------------------------------------------------------------------------ utility
def test_implements_batched_utility(utility_accuracy):
    assert isinstance(utility_accuracy, BatchedUtility)
    assert utility_accuracy.n_players == N_PLAYERS
    assert isinstance(utility_accuracy.preferred_batch_size, int) and utility_accuracy.preferred_batch_size >= 1
    masks = random_masks(np.random.default_rng(0), 4, N_PLAYERS)
    values = utility_accuracy(masks)
    assert values.shape == (4,) and values.dtype == jnp.float32
    # usable inside the caller's jit
    inside = jax.jit(lambda m: utility_accuracy(m) * 2.0)(jnp.asarray(masks))
    np.testing.assert_allclose(np.asarray(inside), 2.0 * np.asarray(values), rtol=1e-6)


def test_empty_coalition_is_untuned_cosine_accuracy(arrays, utility_accuracy):
    _, _, validation = arrays
    query = validation.query_emb.astype(np.float64)
    cosine = np.einsum("vd,vcd->vc", query, validation.choice_emb.astype(np.float64))
    cosine = np.where(validation.choice_mask, cosine, -np.inf)
    expected = np.mean(np.argmax(cosine, axis=1) == validation.answers)
    value = utility_accuracy(np.zeros((2, N_PLAYERS), bool))
    np.testing.assert_allclose(np.asarray(value), [expected, expected], atol=1e-7)
    assert utility_accuracy.evaluate_one(np.zeros(N_PLAYERS, bool)) == pytest.approx(expected, abs=1e-7)


def test_empty_coalition_logprob_matches_numpy(arrays, utility_logprob):
    _, _, validation = arrays
    config = utility_logprob.config
    zero = BilinearParams(np.zeros((DIM, config.rank)), np.zeros((DIM, config.rank)))
    expected = np_validation(zero, config.alpha, config.temperature, validation, "logprob")
    assert float(utility_logprob(np.zeros((1, N_PLAYERS), bool))[0]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("metric", ["logprob", "accuracy"])
def test_trained_value_matches_numpy_scoring(arrays, utility_logprob, utility_accuracy, metric):
    _, _, validation = arrays
    utility = utility_logprob if metric == "logprob" else utility_accuracy
    mask = np.zeros(N_PLAYERS, bool)
    mask[[0, 2, 3, 5, 7, 11]] = True
    params = utility.trained_params(mask)
    assert float(jnp.max(jnp.abs(params.U))) > 0  # training moved U away from its zero init
    expected = np_validation(params, utility.config.alpha, utility.config.temperature, validation, metric)
    tolerance = 1e-5 if metric == "logprob" else 1.0 / N_VAL
    assert utility.evaluate_one(mask) == pytest.approx(expected, abs=tolerance)
    assert float(utility(mask[None])[0]) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize("metric", ["prob", "margin"])
def test_smooth_metrics_match_numpy(arrays, metric):
    """The smooth metrics (mean softmax probability / mean margin of the right choice) vs float64 numpy,
    untuned and trained, on ragged choices (the padded 4th slot must never count as the best wrong one)."""
    prompts, responses, validation = arrays
    utility = EmbeddingProxyUtility.from_arrays(prompts, responses, validation,
                                                EmbeddingProxyConfig(**{**SMALL, "metric": metric}), seed=3)
    config = utility.config
    zero = BilinearParams(np.zeros((DIM, config.rank)), np.zeros((DIM, config.rank)))
    expected_empty = np_validation(zero, config.alpha, config.temperature, validation, metric)
    assert float(utility(np.zeros((1, N_PLAYERS), bool))[0]) == pytest.approx(expected_empty, rel=1e-5, abs=1e-6)
    mask = np.zeros(N_PLAYERS, bool)
    mask[[1, 2, 4, 8, 9]] = True
    params = utility.trained_params(mask)
    expected = np_validation(params, config.alpha, config.temperature, validation, metric)
    assert expected != pytest.approx(expected_empty, abs=1e-4)  # training changed the value
    assert utility.evaluate_one(mask) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    masks = random_masks(np.random.default_rng(5), 6, N_PLAYERS)
    np.testing.assert_allclose(np.asarray(utility(masks)), [utility.evaluate_one(m) for m in masks],
                               rtol=1e-5, atol=1e-6)
    if metric == "prob":
        assert 0.0 < expected < 1.0
    # the numpy margin reference must itself ignore the padded slot: a huge padded score changes nothing
    if metric == "margin":
        poisoned = ValidationEmbeddings.multiple_choice(
            validation.query_emb, np.where(validation.choice_mask[..., None], validation.choice_emb,
                                           validation.query_emb[:, None, :]),
            validation.answers, validation.choice_mask)
        again = EmbeddingProxyUtility.from_arrays(prompts, responses, poisoned, config, seed=3)
        assert float(again(np.zeros((1, N_PLAYERS), bool))[0]) == pytest.approx(expected_empty, rel=1e-5)


def test_weight_decay_is_an_l2_penalty(arrays):
    """One plain SGD step: ``V1 = V0 - lr (dV + wd V0)``, ``U1 = -lr dU`` (``U0 = 0``), dU, dV from spectral_grad."""
    prompts, responses, validation = arrays
    lr, wd = 0.1, 0.5
    mask = np.zeros(N_PLAYERS, bool)
    mask[[0, 3, 4, 6]] = True
    base = dict(objective="spectral", rank=3, steps=1, optimizer="sgd", learning_rate=lr, min_bucket=4,
                max_grad_norm=None)
    plain = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, EmbeddingProxyConfig(**base), seed=1)
    decayed = EmbeddingProxyUtility.from_arrays(prompts, responses, validation,
                                                EmbeddingProxyConfig(weight_decay=wd, **base), seed=1)
    params0 = plain.initial_params
    stats = spectral_stats(jnp.asarray(prompts[mask]), jnp.asarray(responses[mask]), jnp.ones(4, bool))
    grad = spectral_grad(params0, stats, alpha=1.0)
    trained = decayed.trained_params(mask)
    np.testing.assert_allclose(np.asarray(trained.U), -lr * np.asarray(grad.U), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(trained.V),
                               np.asarray(params0.V) - lr * (np.asarray(grad.V) + wd * np.asarray(params0.V)),
                               rtol=1e-4, atol=1e-7)
    # and it differs from the undecayed step by exactly -lr * wd * V0
    np.testing.assert_allclose(np.asarray(trained.V) - np.asarray(plain.trained_params(mask).V),
                               -lr * wd * np.asarray(params0.V), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("which", ["logprob", "accuracy"])
def test_batched_equals_per_coalition_loop(utility_logprob, utility_accuracy, which):
    utility = utility_logprob if which == "logprob" else utility_accuracy
    masks = random_masks(np.random.default_rng(7), 7, N_PLAYERS)
    batched = np.asarray(utility(masks))
    loop = np.array([utility.evaluate_one(mask) for mask in masks])
    if which == "logprob":
        np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-6)
    else:  # a float-level difference may flip at most one near-tie
        np.testing.assert_allclose(batched, loop, atol=1.0 / N_VAL + 1e-7)


@pytest.mark.parametrize("objective", ["spectral", "infonce"])
def test_padding_invariance(arrays, objective):
    prompts, responses, validation = arrays
    config = EmbeddingProxyConfig(**{**SMALL, "objective": objective, "metric": "logprob"})
    utility = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, config)
    mask = np.zeros(N_PLAYERS, bool)
    mask[[1, 4, 6]] = True
    tight, loose = utility.trained_params(mask, n_bucket=3), utility.trained_params(mask, n_bucket=N_PLAYERS)
    for a, b in zip(tight, loose):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="n_bucket"):
        utility.trained_params(mask, n_bucket=2)


def test_wide_chunks_equal_single_chunks(arrays, utility_logprob):
    """chunk_size > 1 (the accelerator path) pads small coalitions to the chunk's bucket: same values."""
    prompts, responses, validation = arrays
    config = EmbeddingProxyConfig(**{**SMALL, "metric": "logprob", "chunk_size": 3})
    wide = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, config, seed=3)
    assert wide.chunk_size == 3 and wide.preferred_batch_size == 12
    masks = random_masks(np.random.default_rng(11), 7, N_PLAYERS)  # 7 is not a multiple of the chunk
    np.testing.assert_allclose(np.asarray(wide(masks)), np.asarray(utility_logprob(masks)), rtol=1e-5, atol=1e-6)


def test_no_retrace_for_new_masks(utility_accuracy):
    rng = np.random.default_rng(5)
    utility_accuracy(random_masks(rng, 5, N_PLAYERS)).block_until_ready()
    traces = utility_accuracy.n_traces
    for _ in range(3):
        utility_accuracy(random_masks(rng, 5, N_PLAYERS)).block_until_ready()
    utility_accuracy(jnp.asarray(random_masks(rng, 5, N_PLAYERS))).block_until_ready()
    assert traces >= 1  # the counter sees traces
    assert utility_accuracy.n_traces == traces


def test_deterministic_for_seed(arrays, utility_logprob):
    prompts, responses, validation = arrays
    masks = random_masks(np.random.default_rng(9), 5, N_PLAYERS)
    again = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, utility_logprob.config, seed=3)
    np.testing.assert_array_equal(np.asarray(again(masks)), np.asarray(utility_logprob(masks)))
    np.testing.assert_array_equal(np.asarray(utility_logprob(masks)), np.asarray(utility_logprob(masks)))
    other = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, utility_logprob.config, seed=4)
    assert not np.allclose(np.asarray(other.initial_params.V), np.asarray(utility_logprob.initial_params.V))
    assert np.all(np.asarray(other.initial_params.U) == 0)


def test_instruction_validation_against_numpy():
    rng = np.random.default_rng(2)
    n_items = 8
    prompts, responses = unit(rng.normal(size=(n_items, DIM))), unit(rng.normal(size=(n_items, DIM)))
    responses = unit(responses + 0.5 * prompts)
    validation = ValidationEmbeddings.instruction(prompts, responses)
    proxy_p, proxy_r = unit(rng.normal(size=(5, DIM))), unit(rng.normal(size=(5, DIM)))
    # with every other item as a distractor the draw does not matter: own response must beat all others
    config = EmbeddingProxyConfig(n_distractors=n_items - 1, rank=2, steps=2, min_bucket=8, metric="accuracy")
    utility = EmbeddingProxyUtility.from_arrays(proxy_p, proxy_r, validation, config)
    cosine = prompts.astype(np.float64) @ responses.astype(np.float64).T
    expected = np.mean(np.argmax(cosine, axis=1) == np.arange(n_items))
    assert float(utility(np.zeros((1, 5), bool))[0]) == pytest.approx(expected, abs=1e-7)
    with pytest.raises(ValueError, match="n_distractors"):
        EmbeddingProxyUtility.from_arrays(proxy_p, proxy_r, validation, EmbeddingProxyConfig(n_distractors=n_items))


def test_bad_inputs(arrays, utility_accuracy):
    prompts, responses, validation = arrays
    with pytest.raises(ValueError, match="shape"):
        utility_accuracy(np.zeros((2, N_PLAYERS + 1), bool))
    with pytest.raises(TypeError, match="bool"):
        utility_accuracy(np.zeros((2, N_PLAYERS), np.float32))
    np.testing.assert_array_equal(np.asarray(as_mask_batch(np.eye(3, dtype=np.int8), 3)), np.eye(3, dtype=bool))
    with pytest.raises(ValueError, match="dim"):
        EmbeddingProxyUtility.from_arrays(prompts[:, :8], responses[:, :8], validation)
    bad = prompts.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        EmbeddingProxyUtility.from_arrays(bad, responses, validation)
    with pytest.raises(ValueError, match="differ"):
        EmbeddingProxyUtility.from_arrays(prompts, responses[:-1], validation)
    with pytest.raises(ValueError, match="answers"):
        ValidationEmbeddings.multiple_choice(validation.query_emb, validation.choice_emb,
                                             np.full(N_VAL, 3), validation.choice_mask)  # masked-out answer
    with pytest.raises(TypeError):
        EmbeddingProxyUtility.from_arrays(prompts, responses, validation.query_emb)


def synthetic_task(rng, n_train, n_val, dim, latent=4, n_choices=4):
    """Prompts/responses share a latent code through a hidden linear map that cosine does not see."""
    prompt_basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0]
    response_basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0]

    def pairs(n):
        code = rng.normal(size=(n, latent))
        prompt = unit(code @ prompt_basis.T + 0.3 * rng.normal(size=(n, dim)))
        response = unit(code @ response_basis.T + 0.15 * code @ prompt_basis.T + 0.3 * rng.normal(size=(n, dim)))
        return prompt, response

    train_prompts, train_responses = pairs(n_train)
    questions, right = pairs(n_val)
    wrong = np.stack([pairs(n_val)[1] for _ in range(n_choices - 1)], axis=1)
    answers = rng.integers(0, n_choices, n_val)
    choices = np.empty((n_val, n_choices, dim), np.float32)
    for slot in range(n_choices):  # right answer at `answers`, the wrong ones fill the other slots in order
        wrong_slot = np.minimum(slot - (slot > answers), n_choices - 2)
        choices[:, slot] = np.where((slot == answers)[:, None], right, wrong[np.arange(n_val), wrong_slot])
    assert np.allclose(choices[np.arange(n_val), answers], right)
    return train_prompts, train_responses, ValidationEmbeddings.multiple_choice(questions, choices, answers)


@pytest.mark.parametrize("objective", ["spectral", "infonce"])
def test_learning_signal_good_beats_empty_and_junk(objective):
    rng = np.random.default_rng(0)
    n_train, dim = 48, 32
    prompts, responses, validation = synthetic_task(rng, n_train, 200, dim)
    junk_responses = responses[np.roll(np.arange(n_train), 1)]  # every response answers another prompt
    config = EmbeddingProxyConfig(objective=objective, rank=4, steps=30, min_bucket=n_train, optimizer="adam",
                                  learning_rate=0.01, metric="accuracy", scale_learning_rate=0.0)
    good = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, config)
    junk = EmbeddingProxyUtility.from_arrays(prompts, junk_responses, validation, config)
    masks = np.array([[False] * n_train, [True] * n_train])
    empty_value, good_value = np.asarray(good(masks))
    junk_value = float(junk(masks)[1])
    assert good_value > empty_value + 0.15, (empty_value, good_value)
    assert junk_value < good_value - 0.15, (junk_value, good_value)
    if objective == "infonce":  # junk pairs teach the contrastive scorer the wrong match: below untuned
        assert junk_value < empty_value, (junk_value, empty_value)


def test_embed_validation_packs_ragged_choices(monkeypatch):
    def fake_embed_texts(texts, *, model, batch_size=64, cache_dir=None, progress=True, device=None):
        rows = [np.random.default_rng(abs(hash(text)) % 2 ** 32).normal(size=DIM) for text in texts]
        return unit(np.array(rows).reshape(len(texts), DIM))

    fake = types.ModuleType("shed_jax.embed")
    fake.DEFAULT_MODEL = "fake-model"
    fake.embed_texts = fake_embed_texts
    monkeypatch.setitem(sys.modules, "shed_jax.embed", fake)
    import shed_jax
    monkeypatch.setattr(shed_jax, "embed", fake, raising=False)

    mc = types.SimpleNamespace(questions=["q0", "q1"], choices=[["a", "b"], ["c", "d", "e"]],
                               answers=np.array([1, 2]))
    embedded = embed_validation(mc, progress=False)
    assert embedded.kind == "multiple_choice" and embedded.choice_emb.shape == (2, 3, DIM)
    np.testing.assert_array_equal(embedded.choice_mask, [[True, True, False], [True, True, True]])
    np.testing.assert_allclose(embedded.choice_emb[1, 2], fake_embed_texts(["e"], model="x")[0])
    np.testing.assert_array_equal(embedded.choice_emb[0, 2], 0.0)
    instruction = types.SimpleNamespace(prompts=["p0", "p1", "p2"], responses=["r0", "r1", "r2"])
    embedded = embed_validation(instruction, progress=False)
    assert embedded.kind == "instruction" and embedded.response_emb.shape == (3, DIM)
    with pytest.raises(TypeError):
        embed_validation(object())


def test_shapley_engine_drives_the_utility(arrays):
    """The engine calls the utility inside its own jit: values must match the per-coalition loop."""
    from shed_jax import shapley
    prompts, responses, validation = arrays
    n_players = 5
    utility = EmbeddingProxyUtility.from_arrays(prompts[:n_players], responses[:n_players], validation,
                                                EmbeddingProxyConfig(**{**SMALL, "metric": "logprob"}))
    table = shapley.coalition_values(utility, n_players, batch_size=16)
    codes = np.arange(2 ** n_players)
    masks = (codes[:, None] >> np.arange(n_players)[None, :]) & 1 == 1
    loop = np.array([utility.evaluate_one(mask) for mask in masks])
    np.testing.assert_allclose(table, loop, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_monte_carlo_engine_efficiency(arrays):
    from shed_jax import shapley
    prompts, responses, validation = arrays
    n_players = 5
    utility = EmbeddingProxyUtility.from_arrays(prompts[:n_players], responses[:n_players], validation,
                                                EmbeddingProxyConfig(**{**SMALL, "metric": "logprob"}))
    loop = [utility.evaluate_one(np.zeros(n_players, bool)), utility.evaluate_one(np.ones(n_players, bool))]
    result = shapley.monte_carlo(utility, n_players, n_permutations=4, seed=0)
    assert result.values.shape == (n_players,) and np.all(np.isfinite(result.values))
    # every permutation's marginals telescope to U(full) - U(empty): efficiency holds exactly
    np.testing.assert_allclose(np.sum(result.values), loop[1] - loop[0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ default scorer
def np_train_scale(prompts, responses, config):
    """float64 reference of the default fine-tune (rank 0): plain gradient descent on ``log_scale`` of the
    InfoNCE loss ``mean_i [logsumexp_j w c_ij / T - w c_ii / T]``, ``w = alpha exp(log_scale)``."""
    cosine = np.asarray(prompts, np.float64) @ np.asarray(responses, np.float64).T
    n = cosine.shape[0]
    log_scale = 0.0
    for _ in range(config.steps):
        weight = config.alpha * np.exp(log_scale)
        logits = weight * cosine / config.temperature
        soft = np.exp(logits - np_logsumexp(logits, 1)[:, None])
        # d loss / d log_scale = w / T * mean_i [sum_j soft_ij c_ij - c_ii]
        grad = weight / config.temperature * np.mean(np.sum(soft * cosine, axis=1) - np.diag(cosine))
        log_scale -= config.scale_learning_rate * grad
    return log_scale


def test_default_scorer_matches_numpy_reference():
    """The default configuration (InfoNCE, sgd, rank 0: only the cosine weight is learned, metric "prob")
    against an independent float64 loop: the learned log-scale and the validation value."""
    rng = np.random.default_rng(4)
    n_train, dim = 12, DIM
    prompts, responses, validation = synthetic_task(rng, n_train, 40, dim)
    config = EmbeddingProxyConfig()
    assert (config.rank, config.objective, config.optimizer, config.metric) == (0, "infonce", "sgd", "prob")
    utility = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, config, seed=0)
    mask = np.zeros(n_train, bool)
    mask[[0, 1, 3, 4, 7, 8, 10]] = True
    params = utility.trained_params(mask)
    expected_scale = np_train_scale(prompts[mask], responses[mask], config)
    assert float(params.log_scale) == pytest.approx(expected_scale, rel=1e-4, abs=1e-6)
    assert abs(expected_scale) > 1e-3  # training moved it
    expected = np_validation((np.zeros((dim, 0)), np.zeros((dim, 0)), expected_scale), config.alpha,
                             config.temperature, validation, "prob")
    assert utility.evaluate_one(mask) == pytest.approx(expected, rel=1e-4)
    assert float(utility(mask[None])[0]) == pytest.approx(expected, rel=1e-4)


def test_default_scorer_trusts_good_pairs_and_distrusts_junk():
    """Pairs whose responses answer their prompts raise the learned cosine weight, and with it the validation
    probability of the right choice; pairs whose responses belong to other prompts lower both."""
    rng = np.random.default_rng(0)
    n_train, n_val, dim = 48, 200, 32

    def pairs(n):  # a response is its prompt plus noise: cosine similarity is informative, but noisy
        prompt = unit(rng.normal(size=(n, dim)))
        return prompt, unit(prompt + 1.2 * unit(rng.normal(size=(n, dim))))

    prompts, responses = pairs(n_train)
    questions, right = pairs(n_val)
    choices = np.stack([right] + [pairs(n_val)[1] for _ in range(3)], axis=1)
    validation = ValidationEmbeddings.multiple_choice(questions, choices, np.zeros(n_val, np.int64))
    junk_responses = responses[np.roll(np.arange(n_train), 1)]
    config = EmbeddingProxyConfig(min_bucket=n_train)
    good = EmbeddingProxyUtility.from_arrays(prompts, responses, validation, config)
    junk = EmbeddingProxyUtility.from_arrays(prompts, junk_responses, validation, config)
    everyone = np.ones(n_train, bool)
    assert float(good.trained_params(everyone).log_scale) > 0 > float(junk.trained_params(everyone).log_scale)
    masks = np.array([[False] * n_train, [True] * n_train])
    empty_value, good_value = np.asarray(good(masks))
    junk_value = float(junk(masks)[1])
    assert good_value > empty_value > junk_value, (good_value, empty_value, junk_value)
    # a coalition's value falls as junk replaces good members
    mixed = EmbeddingProxyUtility.from_arrays(prompts, np.concatenate([responses[:24], junk_responses[24:]]),
                                              validation, config)
    assert good_value > float(mixed(masks)[1]) > junk_value
