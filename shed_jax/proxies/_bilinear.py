"""Pure functions of the bilinear scorer behind :mod:`shed_jax.proxies.embedding`.

Parameters (:class:`BilinearParams`), the InfoNCE and spectral contrastive losses with hand-written gradients,
the ``lax.scan`` training loop, and the validation score of a trained scorer. :func:`_coalition_value` trains
on one coalition and scores it; it is the one function every utility hands to
:func:`shed_jax.proxies.base.evaluate_coalitions` (its identity keys the shared compiled code). See the
:mod:`shed_jax.proxies.embedding` docstring for the model, the objectives and the metrics.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
    from shed_jax.proxies.embedding_config import EmbeddingProxyConfig

_MASKED_LOGIT = -1e9  # finite, so fully masked rows stay NaN-free (and their gradient exactly zero)


class BilinearParams(NamedTuple):
    """Trainable parameters of ``s(p, r) = alpha exp(log_scale) p.r + (p U).(r V)``.

    ``U``, ``V``: ``(d, rank)`` float32 factors (``rank`` may be 0: no low-rank term). ``log_scale``: scalar
    float32 log of the learned weight of the cosine term (0 = the untuned weight ``alpha``).
    """

    U: jax.Array
    V: jax.Array
    log_scale: jax.Array | float = 0.0


def init_params(key: jax.Array, dim: int, rank: int, init_scale: float) -> BilinearParams:
    """``U = 0``, ``V ~ N(0, init_scale^2)``, ``log_scale = 0``: the untuned scorer is exactly ``alpha * p.r``."""
    return BilinearParams(U=jnp.zeros((dim, rank), jnp.float32),
                          V=init_scale * jax.random.normal(key, (dim, rank), jnp.float32),
                          log_scale=jnp.zeros((), jnp.float32))


def cosine_weight(params: BilinearParams, alpha: float) -> jax.Array:
    """The scorer's weight of the cosine term, ``alpha * exp(params.log_scale)``."""
    return alpha * jnp.exp(params.log_scale)


def infonce_loss(params: BilinearParams, prompt_emb: jax.Array, response_emb: jax.Array, valid: jax.Array, *,
                 alpha: float, temperature: float, gram: jax.Array | None = None) -> jax.Array:
    """Prompt-to-response InfoNCE over the valid rows of a padded batch.

    Args:
        params: the scorer's factors.
        prompt_emb, response_emb: ``(n, d)``; row ``i`` is member ``i``'s prompt and response.
        valid: ``(n,)`` bool; padded rows/columns (False) take no part in the loss.
        alpha, temperature: score ``alpha exp(log_scale) p.r + (pU).(rV)`` divided by ``temperature``.
        gram: optional precomputed ``(n, n)`` ``prompt_emb @ response_emb.T``.

    Returns:
        scalar float32: ``mean_{i valid} [logsumexp_{j valid} s_ij / T - s_ii / T]``; 0 with no valid row.
    """
    cosine = prompt_emb @ response_emb.T if gram is None else gram
    scores = cosine_weight(params, alpha) * cosine + (prompt_emb @ params.U) @ (response_emb @ params.V).T
    logits = jnp.where(valid[None, :], scores / temperature, _MASKED_LOGIT)
    per_row = jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
    n_valid = jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)
    return jnp.sum(jnp.where(valid, per_row, 0.0)) / n_valid


_PARAM_GROUPS = BilinearParams(U="factors", V="factors", log_scale="scale")


def _optimizer(config: EmbeddingProxyConfig) -> optax.GradientTransformation:
    """``config.optimizer`` with learning rate ``learning_rate`` on the factors ``U, V`` (their gradient
    clipped to global norm ``max_grad_norm``) and ``scale_learning_rate`` on ``log_scale``."""
    make = optax.adam if config.optimizer == "adam" else optax.sgd
    factors = make(config.learning_rate)
    if config.max_grad_norm is not None:
        factors = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), factors)
    return optax.multi_transform({"factors": factors, "scale": make(config.scale_learning_rate)}, _PARAM_GROUPS)


def infonce_grad(params: BilinearParams, prompt_emb: jax.Array, response_emb: jax.Array, valid: jax.Array, *,
                 alpha: float, temperature: float, gram: jax.Array | None = None) -> BilinearParams:
    """Gradient of :func:`infonce_loss` with respect to ``params``, written out by hand.

    Same arguments and result as ``jax.grad(infonce_loss)`` (tested), but with fewer passes over the
    ``(n, n)`` score matrix: ``dS = (softmax(S) - I) * valid_i / (n_valid T)``, ``dA = dS B``,
    ``dB = dS^T A``, ``dU = P^T dA``, ``dV = R^T dB`` where ``A = P U``, ``B = R V``, and
    ``d log_scale = sum_ij dS_ij alpha exp(log_scale) cos_ij``.
    """
    cosine = prompt_emb @ response_emb.T if gram is None else gram
    weight = cosine_weight(params, alpha)
    projected_prompt = prompt_emb @ params.U                 # A (n, r)
    projected_response = response_emb @ params.V             # B (n, r)
    scores = weight * cosine + projected_prompt @ projected_response.T
    logits = jnp.where(valid[None, :], scores / temperature, _MASKED_LOGIT)
    shifted = jnp.exp(logits - jnp.max(logits, axis=1, keepdims=True))
    row_weight = valid.astype(jnp.float32) / (jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0) * temperature)
    row_scale = row_weight / jnp.sum(shifted, axis=1)
    d_scores = shifted * row_scale[:, None] - jnp.diag(row_weight)
    d_prompt = d_scores @ projected_response                 # dA (n, r)
    d_response = d_scores.T @ projected_prompt               # dB (n, r)
    return BilinearParams(U=prompt_emb.T @ d_prompt, V=response_emb.T @ d_response,
                          log_scale=weight * jnp.sum(d_scores * cosine))


class SpectralStats(NamedTuple):
    """Sufficient statistics of a coalition for :func:`spectral_loss` (sums over members ``i``).

    Attributes:
        prompt_cov: ``(d, d)`` ``sum_i p_i p_i^T``.
        response_cov: ``(d, d)`` ``sum_i r_i r_i^T``.
        cross: ``(d, d)`` ``sum_i p_i r_i^T``.
        n_members: scalar float32 number of members.
    """

    prompt_cov: jax.Array
    response_cov: jax.Array
    cross: jax.Array
    n_members: jax.Array


def spectral_stats(prompt_emb: jax.Array, response_emb: jax.Array, valid: jax.Array) -> SpectralStats:
    """Statistics of the valid rows of ``(n, d)`` prompt/response embeddings (three ``d x d`` GEMMs)."""
    weight = valid.astype(prompt_emb.dtype)[:, None]
    prompt_w, response_w = prompt_emb * weight, response_emb * weight
    return SpectralStats(prompt_w.T @ prompt_w, response_w.T @ response_w, prompt_w.T @ response_w,
                         jnp.sum(valid, dtype=jnp.float32))


def spectral_loss(params: BilinearParams, stats: SpectralStats, *, alpha: float) -> jax.Array:
    """Spectral contrastive loss (HaoChen et al., NeurIPS 2021) of the bilinear scorer over a coalition.

    With ``s_ij = p_i^T (a I + U V^T) r_j``, ``a = alpha exp(log_scale)``, over the ``n`` members,
    ``loss = -2/n sum_i s_ii + 1/n^2 sum_{i,j} s_ij^2``: a member's own response is pulled up, every
    member-pair score (all responses act as negatives) is pushed towards zero. It depends on the members only
    through :class:`SpectralStats`, so a step costs ``O(d^2 rank)`` whatever the coalition size. 0 for an
    empty coalition.
    """
    n_members = jnp.maximum(stats.n_members, 1.0)
    alpha = cosine_weight(params, alpha)
    cross_v = stats.cross @ params.V                                   # (d, r)
    positive = alpha * jnp.trace(stats.cross) + jnp.sum(params.U * cross_v)
    prompt_u = stats.prompt_cov @ params.U                             # (d, r)
    response_v = stats.response_cov @ params.V                         # (d, r)
    negative = (alpha * alpha * jnp.sum(stats.prompt_cov * stats.response_cov)
                + 2.0 * alpha * jnp.sum(prompt_u * response_v)
                + jnp.sum((params.U.T @ prompt_u) * (params.V.T @ response_v)))
    return -2.0 * positive / n_members + negative / (n_members * n_members)


def spectral_grad(params: BilinearParams, stats: SpectralStats, *, alpha: float) -> BilinearParams:
    """Gradient of :func:`spectral_loss` with respect to ``params``, written out by hand (tested against
    ``jax.grad``): six ``d x d x rank`` products per step, in four matmuls.

    With ``a = C_rr V``, ``b = C_pp U``, ``c = C_pr V``, ``e = C_pr^T U``:
    ``dU = -2/n c + 2/n^2 (w C_pp a + b (V^T a))``, ``dV = -2/n e + 2/n^2 (w C_rr b + a (U^T b))`` and
    ``d log_scale = w (-2/n tr C_pr + 2/n^2 (w <C_pp, C_rr> + <b, a>))`` with ``w = alpha exp(log_scale)``.
    """
    n_members = jnp.maximum(stats.n_members, 1.0)
    alpha = cosine_weight(params, alpha)
    dim = params.U.shape[0]
    stacked_v = jnp.concatenate([stats.response_cov, stats.cross], axis=0) @ params.V      # (2d, r)
    stacked_u = jnp.concatenate([stats.prompt_cov, stats.cross.T], axis=0) @ params.U      # (2d, r)
    response_v, cross_v = stacked_v[:dim], stacked_v[dim:]                                 # a, c
    prompt_u, cross_t_u = stacked_u[:dim], stacked_u[dim:]                                 # b, e
    scale = 2.0 / (n_members * n_members)
    grad_u = (-2.0 / n_members) * cross_v + scale * (
        alpha * (stats.prompt_cov @ response_v) + prompt_u @ (params.V.T @ response_v))
    grad_v = (-2.0 / n_members) * cross_t_u + scale * (
        alpha * (stats.response_cov @ prompt_u) + response_v @ (params.U.T @ prompt_u))
    grad_scale = alpha * ((-2.0 / n_members) * jnp.trace(stats.cross) + scale * (
        alpha * jnp.sum(stats.prompt_cov * stats.response_cov) + jnp.sum(prompt_u * response_v)))
    return BilinearParams(U=grad_u, V=grad_v, log_scale=grad_scale)


def _train(params: BilinearParams, prompt_emb, response_emb, valid, gram, config: EmbeddingProxyConfig
           ) -> BilinearParams:
    """``config.steps`` full-batch optimiser steps on the coalition's loss (``lax.scan``).

    ``config.objective == "infonce"``: :func:`infonce_loss` (gradient :func:`infonce_grad`); ``"spectral"``:
    :func:`spectral_loss` on :func:`spectral_stats` (``gram`` unused).
    """
    optimizer = _optimizer(config)
    if config.objective == "infonce":
        def loss_grad(current):
            return infonce_grad(current, prompt_emb, response_emb, valid, gram=gram, alpha=config.alpha,
                                temperature=config.temperature)
    else:
        stats = spectral_stats(prompt_emb, response_emb, valid)

        def loss_grad(current):
            return spectral_grad(current, stats, alpha=config.alpha)

    def step(carry, _):
        current, opt_state = carry
        grads = loss_grad(current)
        if config.weight_decay > 0:  # L2 penalty wd/2 (|U|^2 + |V|^2) on the loss (not on log_scale)
            grads = grads._replace(U=grads.U + config.weight_decay * current.U,
                                   V=grads.V + config.weight_decay * current.V)
        updates, opt_state = optimizer.update(grads, opt_state, current)
        return (optax.apply_updates(current, updates), opt_state), None

    (trained, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=config.steps)
    return trained


class _ProxyArrays(NamedTuple):
    """Device arrays of one utility (a pytree passed to the jitted functions, never closed over)."""

    prompt: jax.Array          # (K, d)
    response: jax.Array        # (K, d)
    gram: jax.Array | None     # (K, K) prompt @ response.T, or None
    query: jax.Array           # (V, d) validation questions / prompts
    pool: jax.Array            # (M, d) validation candidate responses / choices
    cand_index: jax.Array | None  # (V, C) int32 rows of pool; None: pool is (V*C, d) in candidate order
    cand_mask: jax.Array       # (V, C) bool
    answers: jax.Array         # (V,) int32 index into the C candidates
    cand_cosine: jax.Array     # (V, C) query . pool[cand_index]
    params0: BilinearParams    # initial (untuned) factors


def _validation_scores(data: _ProxyArrays, params: BilinearParams, config: EmbeddingProxyConfig) -> jax.Array:
    """``(V, C)`` scores ``alpha exp(log_scale) q.c + (qU).(cV)`` of every validation candidate."""
    query_low = data.query @ params.U                       # (V, r)
    pool_low = data.pool @ params.V                         # (M, r)
    n_items, n_candidates = data.cand_mask.shape
    candidates_low = (pool_low.reshape(n_items, n_candidates, -1) if data.cand_index is None
                      else pool_low[data.cand_index])       # (V, C, r)
    low = jnp.einsum("vr,vcr->vc", query_low, candidates_low)
    return cosine_weight(params, config.alpha) * data.cand_cosine + low


def _validation_value(data: _ProxyArrays, params: BilinearParams, config: EmbeddingProxyConfig) -> jax.Array:
    """Scalar float32 utility of a scorer on the validation set (``config.metric``; see
    :class:`EmbeddingProxyConfig`). Masked (padding) candidates never count, neither as the best wrong one."""
    scores = _validation_scores(data, params, config)
    answers = data.answers[:, None]
    if config.metric == "accuracy":
        masked = jnp.where(data.cand_mask, scores, -jnp.inf)
        return jnp.mean((jnp.argmax(masked, axis=1) == data.answers).astype(jnp.float32))
    right = jnp.take_along_axis(scores, answers, axis=1)[:, 0]
    if config.metric == "margin":
        is_wrong = data.cand_mask & (jnp.arange(scores.shape[1])[None, :] != answers)
        best_wrong = jnp.max(jnp.where(is_wrong, scores, -jnp.inf), axis=1)
        return jnp.mean(right - best_wrong)
    logits = jnp.where(data.cand_mask, scores / config.temperature, _MASKED_LOGIT)
    log_prob = jax.nn.log_softmax(logits, axis=1)
    right_log_prob = jnp.take_along_axis(log_prob, answers, axis=1)[:, 0]
    if config.metric == "prob":
        return jnp.mean(jnp.exp(right_log_prob))
    return jnp.mean(right_log_prob)


def _coalition_value(data: _ProxyArrays, mask: jax.Array, *, n_bucket: int, config: EmbeddingProxyConfig
                     ) -> jax.Array:
    """Trains on the members of ``mask`` ``(K,)`` padded to ``n_bucket`` rows and returns the scalar value.

    Requires ``mask.sum() <= n_bucket``; with ``n_bucket == 0`` returns the untuned value.
    """
    if n_bucket == 0:
        return _validation_value(data, data.params0, config)
    member_index = jnp.argsort(~mask, stable=True)[:n_bucket]      # members first, in player order
    valid = mask[member_index]
    prompt, response = data.prompt[member_index], data.response[member_index]
    gram = (None if data.gram is None or config.objective != "infonce"
            else data.gram[member_index[:, None], member_index[None, :]])
    trained = _train(data.params0, prompt, response, valid, gram, config)
    return _validation_value(data, trained, config)


_coalition_value_jit = jax.jit(_coalition_value, static_argnames=("n_bucket", "config"))
_train_jit = jax.jit(_train, static_argnames=("config",))
