"""Test items that also appear in a training set: the same prompt text, after normalisation.

A test item is the question (multiple choice) or the prompt (instruction data); a training record is its
prompt (instruction plus input). Texts are compared after Unicode NFKC normalisation, case folding and
collapsing runs of whitespace, so a copy that differs only in spacing or case still counts. Matching is by
exact normalised text (a hash set): near-duplicates with other wording are not found.

Example:
    >>> find_overlap(["What is 2+2?", "Name a colour"], {"shed": ["what is  2+2?", "hi"]})
    {'shed': array([ True, False])}
"""
from __future__ import annotations

import re
import unicodedata
from typing import Mapping, Sequence

import numpy as np

__all__ = ["normalise", "find_overlap"]

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace runs collapsed to one space, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def find_overlap(test_prompts: Sequence[str], training_prompts: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """For each training set, ``(n_items,)`` bool: the test items whose prompt is one of the set's prompts."""
    keys = [normalise(t) for t in test_prompts]
    out = {}
    for name, prompts in training_prompts.items():
        seen = {normalise(p) for p in prompts}
        out[name] = np.fromiter((k in seen for k in keys), bool, count=len(keys))
    return out
