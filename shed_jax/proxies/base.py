"""The batched utility contract shared by every proxy model and the Shapley engine.

A *utility* values coalitions of players (here: proxy examples, one per cluster). It is called on a batch
of coalitions at once, given as a boolean membership matrix, and returns one value per coalition, the
shape of shapiq's ``Game.__call__`` and pyDVL's ``Utility``::

    masks (B, n_players) bool  ->  values (B,) float32

The Shapley engine (``shed_jax.shapley``) pads batches to fixed shapes and, when the utility has an
integer attribute ``preferred_batch_size`` and no batch size was asked for, uses it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BatchedUtility", "as_mask_batch"]


@runtime_checkable
class BatchedUtility(Protocol):
    """A value function over coalitions, batched and jittable.

    Attributes:
        n_players: number of players ``n``; coalitions are rows of a ``(B, n)`` boolean matrix.
        preferred_batch_size: the batch size ``B`` the utility runs most efficiently at (the engine uses
            it when it is not told otherwise).

    Calling the utility with ``masks`` of shape ``(B, n_players)`` and dtype bool returns ``(B,)``
    float32 values; ``masks[b, i]`` is True when player ``i`` is a member of coalition ``b``. The call
    must be traceable (usable inside ``jax.jit``) and must not recompile for a new batch of the same shape.
    """

    n_players: int
    preferred_batch_size: int

    def __call__(self, masks: jax.Array) -> jax.Array: ...


def as_mask_batch(masks, n_players: int) -> jax.Array:
    """Checks and converts a batch of coalition masks.

    Args:
        masks: array-like of shape ``(B, n_players)``, dtype bool or integer (0/1); a tracer is accepted.
        n_players: expected number of columns.

    Returns:
        ``(B, n_players)`` bool ``jax.Array``.

    Raises:
        ValueError: wrong rank or number of columns.
        TypeError: floating-point or other non-integer dtype (a fractional membership has no meaning).
    """
    if not isinstance(masks, jax.Array):
        masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != n_players:
        raise ValueError(
            f"masks must have shape (batch, n_players={n_players}), got {tuple(masks.shape)}"
        )
    dtype = np.dtype(masks.dtype)
    if dtype == np.bool_:
        return jnp.asarray(masks)
    if np.issubdtype(dtype, np.integer):
        return jnp.asarray(masks) != 0
    raise TypeError(f"masks must be bool (or integer 0/1), got dtype {dtype}")
