"""Permutation sampler: sample index -> permutation, independent of batching and devices.

Sample ``i`` of a run with key ``key`` is always the permutation drawn from ``jax.random.fold_in(key, i)``,
so any chunking of the index range (batch size, device count, resumption) sees the same permutations.
With antithetic sampling a sample is the pair (permutation, reversed permutation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


KEY_BLOCK = 256
"""fold_in keys are computed in blocks of this many sample indices by one shared compiled function."""


@jax.jit
def _fold_in_block(seed: jax.Array, start: jax.Array) -> jax.Array:
    key = jax.random.key(seed)
    indices = start + jnp.arange(KEY_BLOCK, dtype=jnp.int32)
    words = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(key, i)))(indices)
    return words.reshape(KEY_BLOCK, -1).astype(jnp.uint32)


def permutation_keys(seed: int, start: int, count: int) -> jax.Array:
    """Key words of ``jax.random.fold_in(jax.random.key(seed), i)`` for ``i`` in ``[start, start + count)``.

    Returns ``(count, W)`` uint32 (``W = 2`` for the default threefry keys). Computed in fixed blocks of
    ``KEY_BLOCK`` indices by one jitted function, so it compiles once per process.
    """
    blocks = [_fold_in_block(jnp.uint32(seed), jnp.int32(s)) for s in range(start, start + count, KEY_BLOCK)]
    words = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)
    return words[:count]


def permutations_from_keys(key_words: jax.Array, n_players: int) -> jax.Array:
    """Permutations from per-sample key words (see :func:`sample_permutations`). Jittable.

    Args:
      key_words: ``(P, W)`` uint32 from :func:`permutation_keys`.
      n_players: ``n``.

    Returns:
      ``(P, n)`` int32 permutations.
    """
    players = jnp.arange(n_players, dtype=jnp.uint32)

    def one(words):
        h1 = players * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15)
        h2 = players * jnp.uint32(0x632BE59B) + jnp.uint32(0x1B873593)
        for w in range(words.shape[0]):
            h1 = _fmix32(h1 ^ words[w])
            h2 = _fmix32(h2 ^ _fmix32(words[w] + jnp.uint32(0x68E31DA4)))
        return jax.lax.sort((h1, h2, players.astype(jnp.int32)), num_keys=2)[2]

    return jax.vmap(one)(key_words)


def sample_permutations(seed: int, start: int, count: int, n_players: int) -> jax.Array:
    """Permutations for sample indices ``start .. start + count - 1`` of a run with ``seed``.

    Permutation ``i`` is determined by ``jax.random.fold_in(jax.random.key(seed), i)`` alone: the words of
    that key are hashed with each player index (MurmurHash3 finaliser, two independent 32-bit hashes per
    player) and the players are sorted by the resulting 64-bit keys (ties, probability about
    ``n**2 / 2**65``, broken by player index). This costs one ``fold_in`` per permutation; drawing ``n``
    values per permutation with ``jax.random.bits`` instead compiles seconds slower on CPU (threefry), for
    no statistical gain here.

    Returns:
      ``(count, n)`` int32; row ``p`` is a permutation of ``0..n-1`` (the removal order, first entry
      removed first).
    """
    return permutations_from_keys(permutation_keys(seed, start, count), n_players)


def with_antithetic(perms: jax.Array) -> jax.Array:
    """``(P, n)`` permutations -> ``(2P, n)``: rows ``2p`` and ``2p+1`` are ``perms[p]`` and its reverse."""
    pairs = jnp.stack([perms, perms[:, ::-1]], axis=1)
    return pairs.reshape(perms.shape[0] * 2, perms.shape[1])


def ranks_of(perms: jax.Array) -> jax.Array:
    """Inverse permutations: ``ranks[p, perms[p, k]] = k`` (the position at which each player is removed).

    Args:
      perms: ``(P, n)`` int32 permutations.

    Returns:
      ``(P, n)`` int32.
    """
    n = perms.shape[1]
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :], perms.shape)
    rows = jnp.arange(perms.shape[0], dtype=jnp.int32)[:, None]
    return jnp.zeros_like(perms).at[jnp.broadcast_to(rows, perms.shape), perms].set(positions)
