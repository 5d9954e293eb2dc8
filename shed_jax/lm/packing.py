"""Sequence packing: several tokenised sequences per row of ``width`` tokens, with segment ids.

Padding every sequence of a step to the longest one's bucket spends most FLOPs on padding when lengths vary (dolly:
40-60% at width 256). Packing places the sequences of a group (one slot's minibatch at one step, or a validation
set) into as few rows of ``width`` tokens as first-fit decreasing finds, and describes each row by

* ``source``: for each position, the flat index ``table_row * table_width + column`` of the token it holds in the
  right-padded :class:`~shed_jax.lm.prompts.TokenTable` (so ids, targets and weights are one gather, and the RoPE
  position is ``column``: positions restart at 0 in each segment), or ``pad_index`` for padding;
* ``segment``: 1, 2, ... for the sequences of the row in order, 0 for padding (contiguous, at the end).

The decoder then attends block-diagonally (:class:`shed_jax.lm.model.Decoder`, ``segment_ids``). Each sequence
keeps its own targets and weights, so a token-mean loss over a packed batch equals the unpacked one.

All functions are NumPy, vectorised over groups; the only Python loop is over the items of a group.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Placement", "first_fit_decreasing", "first_fit_mixed", "packed_layout", "row_buckets"]


class Placement(NamedTuple):
    """Where each item of each group goes: ``row`` and ``offset`` ``(G, B)`` int32, ``n_rows`` ``(G,)`` int32."""

    row: np.ndarray
    offset: np.ndarray
    n_rows: np.ndarray


def first_fit_decreasing(lengths: np.ndarray, width: int) -> Placement:
    """Pack each group's items (lengths ``(G, B)``, each ``1..width``; 0 = no item) into rows of ``width``.

    Items are taken longest first, each into the first row with room (first-fit decreasing, at most
    11/9 OPT + 1 rows). Within a row, items sit in placement order at increasing offsets.

    >>> p = first_fit_decreasing(np.array([[5, 3, 4, 2]]), 8)
    >>> p.row.tolist(), p.offset.tolist(), p.n_rows.tolist()
    ([[0, 0, 1, 1]], [[0, 5, 0, 4]], [2])
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.ndim != 2:
        raise ValueError(f"lengths: expected (groups, items), got shape {lengths.shape}")
    if lengths.size and (lengths.max() > width or lengths.min() < 0):
        raise ValueError(f"lengths: each must be in 0..{width}")
    n_groups, n_items = lengths.shape
    order = np.argsort(-lengths, axis=1, kind="stable")
    fill = np.zeros((n_groups, max(n_items, 1)), np.int64)
    row = np.zeros((n_groups, n_items), np.int32)
    offset = np.zeros((n_groups, n_items), np.int32)
    groups = np.arange(n_groups)
    for rank in range(n_items):  # over the items of a group (a minibatch), vectorised over groups
        item = order[:, rank]
        size = lengths[groups, item]
        target = np.argmax(fill + size[:, None] <= width, axis=1)  # an empty row always fits
        row[groups, item] = target
        offset[groups, item] = fill[groups, target]
        fill[groups, target] += size
    used = np.where(lengths > 0, row + 1, 0)
    return Placement(row, offset, used.max(axis=1, initial=0).astype(np.int32))


def first_fit_mixed(lengths: np.ndarray, kinds: np.ndarray, width: int, max_kinds: int
                    ) -> tuple[Placement, np.ndarray]:
    """First-fit decreasing (:func:`first_fit_decreasing`) of each group's items into rows of ``width`` where a row
    holds items of at most ``max_kinds`` different kinds (e.g. the coalition slots whose sequences share a row: each
    kind present in a row costs its own LoRA product there, :class:`shed_jax.lm.model.Decoder` ``lora_choice``).

    Args:
        lengths: ``(G, B)`` item lengths, each ``0..width`` (0: no item).
        kinds: ``(G, B)`` int kind of each item (>= 0).
        max_kinds: most distinct kinds in one row (1: rows never mix kinds).

    Returns:
        ``(placement, row_kinds)``: the placement, and ``(G, B, max_kinds)`` int32 the kinds of each row in order
        of first use, -1 where unused (rows past ``placement.n_rows`` are all -1).

    >>> p, k = first_fit_mixed(np.array([[5, 3, 4, 2]]), np.array([[0, 1, 1, 2]]), 8, 2)
    >>> p.row.tolist(), p.offset.tolist(), p.n_rows.tolist(), k[0, :2].tolist()
    ([[0, 0, 1, 1]], [[0, 5, 0, 4]], [2], [[0, 1], [1, 2]])
    """
    lengths = np.asarray(lengths, np.int64)
    kinds = np.asarray(kinds, np.int64)
    if lengths.ndim != 2 or kinds.shape != lengths.shape:
        raise ValueError(f"lengths, kinds: expected equal (groups, items) shapes, got {lengths.shape}, {kinds.shape}")
    if lengths.size and (lengths.max() > width or lengths.min() < 0):
        raise ValueError(f"lengths: each must be in 0..{width}")
    if int(max_kinds) < 1:
        raise ValueError(f"max_kinds: must be >= 1, got {max_kinds}")
    n_groups, n_items = lengths.shape
    n_rows_max = max(n_items, 1)
    order = np.argsort(-lengths, axis=1, kind="stable")
    fill = np.zeros((n_groups, n_rows_max), np.int64)
    row_kinds = np.full((n_groups, n_rows_max, int(max_kinds)), -1, np.int64)
    row = np.zeros((n_groups, n_items), np.int32)
    offset = np.zeros((n_groups, n_items), np.int32)
    groups = np.arange(n_groups)
    for rank in range(n_items):  # over the items of a group, vectorised over groups
        item = order[:, rank]
        size, kind = lengths[groups, item], kinds[groups, item]
        present = np.any(row_kinds == kind[:, None, None], axis=2)                     # (G, R)
        n_present = np.sum(row_kinds >= 0, axis=2)
        room = (fill + size[:, None] <= width) & (present | (n_present < max_kinds))
        target = np.argmax(room, axis=1)  # an empty row always has room
        row[groups, item] = target
        offset[groups, item] = fill[groups, target]
        placed = size > 0
        fill[groups, target] += size
        new_kind = placed & ~present[groups, target]
        slot = n_present[groups, target]
        g = groups[new_kind]
        row_kinds[g, target[new_kind], slot[new_kind]] = kind[new_kind]
    used = np.where(lengths > 0, row + 1, 0)
    placement = Placement(row, offset, used.max(axis=1, initial=0).astype(np.int32))
    return placement, row_kinds[:, :n_items].astype(np.int32)


def packed_layout(items: np.ndarray, lengths: np.ndarray, placement: Placement, *, n_rows: int, width: int,
                  table_width: int, pad_index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(source, segment)``, each ``(G, n_rows, width)`` int32, of a placement (see the module docstring).

    Args:
        items: ``(G, B)`` table rows of the items; lengths: their ``(G, B)`` lengths (0: no item).
        placement: from :func:`first_fit_decreasing`; every ``placement.n_rows`` must be ``<= n_rows``.
        table_width: the token table's width (flat index ``row * table_width + column``).
        pad_index: the flat index padding positions read (a padding token with weight 0).
    """
    n_groups, n_items = lengths.shape
    if placement.n_rows.size and placement.n_rows.max() > n_rows:
        raise ValueError(f"n_rows: {n_rows} < the {placement.n_rows.max()} rows a group needs")
    source = np.full((n_groups, n_rows, width), pad_index, np.int32)
    segment = np.zeros((n_groups, n_rows, width), np.int32)
    column = np.arange(width)[None, :]
    groups = np.arange(n_groups)
    # segment number: 1 + the number of items placed earlier (smaller offset) in the same row
    same_row = placement.row[:, :, None] == placement.row[:, None, :]
    earlier = (placement.offset[:, None, :] < placement.offset[:, :, None]) & (lengths[:, None, :] > 0)
    number = 1 + np.sum(same_row & earlier, axis=2)
    for item in range(n_items):
        start = placement.offset[:, item][:, None]
        size = lengths[:, item][:, None]
        inside = (column >= start) & (column < start + size)                             # (G, width)
        rows = placement.row[:, item]
        flat = items[:, item][:, None].astype(np.int64) * table_width + (column - start)
        source[groups, rows] = np.where(inside, flat, source[groups, rows])
        segment[groups, rows] = np.where(inside, number[:, item][:, None], segment[groups, rows])
    return source, segment


def row_buckets(max_rows: int) -> tuple[int, ...]:
    """Row counts a packed step is padded to: 1, 2, 3, 4, 6, 8, 12, 16, ... (about x1.5), the last ``max_rows``.

    >>> row_buckets(4), row_buckets(10)
    ((1, 2, 3, 4), (1, 2, 3, 4, 6, 8, 10))
    """
    sizes, size = [], 1
    while size < max_rows:
        sizes.append(size)
        power = 2 ** int(math.floor(math.log2(size)))
        size = size + 1 if size < 4 else (power * 3 // 2 if size < power * 3 // 2 else power * 2)
    return tuple(sizes) + (int(max_rows),)
