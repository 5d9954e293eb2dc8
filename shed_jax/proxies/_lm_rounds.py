"""The host bookkeeping of the LM proxy's rounds: which coalitions of a mask batch still need a fine-tune (dedupe and
cache), whether U(empty) rides in a free slot, and a stand-in utility that counts the rounds a Shapley run makes."""
from __future__ import annotations

import numpy as np

__all__ = ["RoundCounter", "empty_rides_along", "group_rows"]

def _mask_key(mask_row: np.ndarray) -> bytes:
    return np.packbits(mask_row).tobytes()


def group_rows(masks: np.ndarray, known) -> tuple[dict[bytes, list[int]], list[int], dict[bytes, list[int]]]:
    """The host bookkeeping of one call over a ``(B, n)`` mask batch (no device work): ``(pending, empty_rows,
    cached)``: the distinct coalitions not in ``known`` (a dict or set of keys, or None: no cache) in the order of
    their first row, each with its rows; the rows of the empty coalition; the rows whose value ``known`` holds."""
    pending: dict[bytes, list[int]] = {}
    cached: dict[bytes, list[int]] = {}
    empty_rows: list[int] = []
    for row, mask in enumerate(masks):  # host bookkeeping over the batch (dedupe, cache), no device work
        if not mask.any():
            empty_rows.append(row)
            continue
        key = _mask_key(mask)
        (cached if known is not None and key in known else pending).setdefault(key, []).append(row)
    return pending, empty_rows, cached


def empty_rides_along(has_empty_rows: bool, empty_unknown: bool, n_pending: int, n_slots: int) -> bool:
    """Whether U(empty) is computed in a free slot of the call's last round (else, when it is needed and unknown,
    it takes a round of its own)."""
    return has_empty_rows and empty_unknown and n_pending % n_slots != 0


class RoundCounter:
    """A stand-in for :class:`LMProxyUtility` under the Shapley engine that counts the rounds the utility would run
    (same batch size, slots, dedupe and cache; see :meth:`LMProxyUtility.expected_rounds`) and returns zeros."""

    jittable = False

    def __init__(self, n_players: int, n_slots: int, preferred_batch_size: int, cache: bool):
        self.n_players, self.n_slots, self.preferred_batch_size = n_players, n_slots, preferred_batch_size
        self.known: set[bytes] | None = set() if cache else None
        self.empty_known = False
        self.rounds = 0
        self.round_sizes: list[tuple[int, int]] = []  # per round: (fine-tunes, coalitions scored incl. U(empty))

    def __call__(self, masks):
        masks = np.asarray(masks)
        pending, empty_rows, _ = group_rows(masks, self.known)
        with_empty = empty_rides_along(bool(empty_rows), not self.empty_known, len(pending), self.n_slots)
        for start in range(0, len(pending), self.n_slots):  # the utility's rounds (LMProxyUtility.evaluate)
            tuned = min(self.n_slots, len(pending) - start)
            last = start + self.n_slots >= len(pending)
            self.round_sizes.append((tuned, tuned + int(with_empty and last)))
        if empty_rows and not self.empty_known:
            if not with_empty:
                self.round_sizes.append((0, 1))  # U(empty) in a round of its own
            self.empty_known = True
        self.rounds = len(self.round_sizes)
        if self.known is not None:
            self.known.update(pending)
        return np.zeros(masks.shape[0], np.float32)
