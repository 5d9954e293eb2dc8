"""Generated example data with a known answer: an instruction set with planted junk, and a validation set.

``make_demo`` writes a small Alpaca-format training set (``instruction``/``input``/``output``/``category``)
built from templates over 32 topics (arithmetic, unit conversions, capitals, antonyms, plurals, animal
facts, text transforms, translations, ...). Every fact is generated programmatically from small built-in
word lists, so each good record's ``output`` is a correct answer to its ``instruction``. Each topic has
several phrasings of the question and of the answer; ``category`` is the topic family (e.g. ``"geography"``).

A block of whole topics is *junk*: their instructions are ordinary questions of that topic, but their
responses do not answer them -- the answer to a question of a different topic ("mismatched"), a refusal
("refusal") or off-topic boilerplate ("unrelated"). Which records are junk is returned in
``DemoPaths.junk_indices`` and written to ``meta.json``; the records themselves carry no label.

The validation set holds questions of every topic (the target tasks, answered correctly; with
``validation_topics="good"``, of the good topics only) about facts that never occur in the training set (held
out per topic), as multiple-choice items (``question``/``choices``/``answer``; the distractors are answers to
other questions of the same and of other topics) or as instruction records. With only the good topics in the
validation set, a junk topic that no validation question asks about cannot lower any validation-based
utility, so ``"all"`` is the default.

Because topics are separated by their wording, a sentence embedder plus k-means recovers them as clusters,
and a model that learns to match prompts to responses in embedding space learns from the good topics but
not from the junk ones: SHED should give the junk clusters the lowest values. Everything is deterministic
for a given seed.

Example:
    >>> import tempfile
    >>> demo = make_demo(tempfile.mkdtemp(), n_examples=120, n_validation=40, seed=0)
    >>> demo.train.name, demo.valid.name, len(demo.junk_indices)
    ('train.jsonl', 'valid.jsonl', 24)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shed_jax.demo._topics import _TOPICS, _cap
from shed_jax.io import atomic_write_json, write_jsonl

__all__ = ["DemoPaths", "make_demo", "answer_in_text", "topic_names", "JUNK_STYLES"]

JUNK_STYLES = ("mismatched", "refusal", "unrelated")


@dataclass(frozen=True)
class DemoPaths:
    """What ``make_demo`` wrote.

    Attributes:
        train: the training set, Alpaca JSONL (``instruction``, ``input``, ``output``, ``category``).
        valid: the validation set (multiple-choice or Alpaca JSONL).
        junk_indices: ``(n_junk,)`` int64, sorted 0-based line indices of the junk records in ``train``.
        meta: the ground truth (also in ``meta_path``): topics, junk topics and their style, per-record
            topic and correct short answer, ``junk_indices``, the generation options.
        meta_path: ``meta.json`` next to the data files.
    """

    train: Path
    valid: Path
    junk_indices: np.ndarray
    meta: dict
    meta_path: Path


# --------------------------------------------------------------------------------------------------------
# Junk responses of the styles "refusal" and "unrelated" ("mismatched" takes another topic's answer).

_REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I am unable to answer this question.",
    "I cannot provide that information.",
    "Sorry, I don't know.",
    "I'm not able to assist with that.",
    "That is not something I can answer right now.",
    "Unfortunately I cannot help with this one.",
    "I would rather not answer that question.",
    "I am sorry, this request goes beyond what I can do.",
    "I don't have enough information to respond to that.",
]
_UNRELATED = [
    "Our office is closed on public holidays; please call back during business hours.",
    "Click here to subscribe to our newsletter for weekly deals!",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "The meeting has been moved to Thursday afternoon.",
    "Remember to water the plants twice a week during summer.",
    "This product is available in three sizes and ships within two business days.",
    "Thank you for your order! Your tracking number will arrive by email.",
    "Terms and conditions apply. See website for details.",
    "The quick brown fox jumps over the lazy dog.",
    "Please log out before leaving the computer lab.",
    "Parking is free for visitors after six in the evening.",
    "Our customer service team will get back to you shortly.",
    "Don't forget to bring a jacket, it might get chilly tonight.",
    "Batteries not included. Keep away from direct sunlight.",
    "Follow us on social media for the latest updates.",
]


def topic_names() -> list[str]:
    """Names of the built-in topics, in their fixed order (``len == 32``)."""
    return [topic.name for topic in _TOPICS]


# --------------------------------------------------------------------------------------------------------

def answer_in_text(answer: str, text: str) -> bool:
    """True iff ``answer`` occurs in ``text`` as a whole word or phrase (case-insensitive).

    >>> answer_in_text("mice", "The plural of mouse is mice."), answer_in_text("7", "It is 17.")
    (True, False)
    """
    pattern = r"(?<!\w)" + re.escape(answer.lower()) + r"(?!\w)"
    return re.search(pattern, text.lower()) is not None


def _render(template: str, fact: dict) -> str:
    fields = dict(fact)
    if "x" in fields:
        fields["_x"] = _cap(str(fields["x"]))
    return template.format(**fields)


def _prompt_text(instruction: str, input_text: str) -> str:
    return instruction + "\n\n" + input_text if input_text else instruction


def _allocate(total: int, capacities: Sequence[int], what: str) -> list[int]:
    """Split ``total`` as evenly as possible over parts with the given capacities (water-filling)."""
    if total > sum(capacities):
        raise ValueError(f"cannot generate {total} {what}: the built-in word lists allow at most "
                         f"{sum(capacities)} with these topics")
    counts = [0] * len(capacities)
    remaining = total
    while remaining:
        open_parts = [i for i, cap in enumerate(capacities) if counts[i] < cap]
        share, extra = divmod(remaining, len(open_parts))
        for rank, i in enumerate(open_parts):
            add = min(share + (1 if rank < extra else 0), capacities[i] - counts[i])
            counts[i] += add
            remaining -= add
    return counts


def _junk_response(style: str, answer: str, topic_index: int, facts_by_topic: list[list[dict]],
                   rng: np.random.Generator) -> str:
    """A response that does not contain ``answer``: another topic's answer, a refusal, or boilerplate."""
    for _ in range(200):
        if style == "mismatched":
            other = int(rng.integers(len(_TOPICS) - 1))
            other += other >= topic_index
            facts = facts_by_topic[other]
            fact = facts[int(rng.integers(len(facts)))]
            responses = _TOPICS[other].responses
            text = _render(responses[int(rng.integers(len(responses)))], fact)
        elif style == "refusal":
            text = _REFUSALS[int(rng.integers(len(_REFUSALS)))]
        else:
            text = _UNRELATED[int(rng.integers(len(_UNRELATED)))]
        if not answer_in_text(answer, text):
            return text
    raise RuntimeError(f"could not draw a {style} junk response avoiding {answer!r}")  # pragma: no cover


def make_demo(out_dir: str | os.PathLike, *, n_examples: int = 600, junk_fraction: float = 0.2,
              n_junk_topics: int | None = None, n_topics: int | None = None, n_validation: int = 200,
              validation_format: str = "multiple_choice", validation_topics: str = "all", n_choices: int = 4,
              seed: int = 0) -> DemoPaths:
    """Write a generated training set with planted junk topics and a held-out validation set.

    Args:
        out_dir: directory to write ``train.jsonl``, ``valid.jsonl`` and ``meta.json`` into (created).
        n_examples: number of training records N (``>= 2 * n_topics``).
        junk_fraction: fraction of the N records that are junk, in ``[0, 1)``. The junk records fill whole
            topics: ``n_junk_topics`` defaults to ``round(junk_fraction * n_topics)`` (at least 1 when
            ``junk_fraction > 0``) and exactly ``round(junk_fraction * N)`` records are junk.
        n_junk_topics: number of junk topics, overriding the default above (``0 < n_junk_topics < n_topics``
            when ``junk_fraction > 0``).
        n_topics: number of topics to draw from the 32 built-in ones (default: all).
        n_validation: number of validation items, spread evenly over the validation topics.
        validation_format: ``"multiple_choice"`` (``question``/``choices``/``answer`` + ``id``/``subject``)
            or ``"instruction"`` (Alpaca records, like the training set).
        validation_topics: ``"all"`` (default: validation asks about every topic, the junk ones with correct
            answers) or ``"good"`` (only about the good topics).
        n_choices: choices per multiple-choice item (>= 2): the correct answer, one distractor from the same
            topic, the rest answers of other validation topics.
        seed: everything is a deterministic function of the arguments.

    Returns:
        ``DemoPaths``; ``junk_indices`` is ``(n_junk,)`` int64, sorted, indexing lines of ``train.jsonl``.

    Raises:
        ValueError: for arguments out of range, or more examples than the word lists can phrase distinctly.
    """
    n_topics = len(_TOPICS) if n_topics is None else int(n_topics)
    if not 2 <= n_topics <= len(_TOPICS):
        raise ValueError(f"n_topics must be in [2, {len(_TOPICS)}], got {n_topics}")
    if not 0.0 <= junk_fraction < 1.0:
        raise ValueError(f"junk_fraction must be in [0, 1), got {junk_fraction}")
    if n_examples < 2 * n_topics:
        raise ValueError(f"n_examples must be >= 2 * n_topics = {2 * n_topics}, got {n_examples}")
    if validation_format not in ("multiple_choice", "instruction"):
        raise ValueError(f"validation_format must be 'multiple_choice' or 'instruction', got {validation_format!r}")
    if validation_topics not in ("good", "all"):
        raise ValueError(f"validation_topics must be 'good' or 'all', got {validation_topics!r}")
    if n_choices < 2:
        raise ValueError(f"n_choices must be >= 2, got {n_choices}")
    n_junk = int(round(junk_fraction * n_examples))
    if n_junk_topics is None:
        n_junk_topics = max(1, int(round(junk_fraction * n_topics))) if n_junk > 0 else 0
    n_junk_topics = int(n_junk_topics)
    if n_junk == 0:
        n_junk_topics = 0
    elif not 1 <= n_junk_topics < n_topics:
        raise ValueError(f"n_junk_topics must be in [1, n_topics - 1 = {n_topics - 1}], got {n_junk_topics}")
    n_good = n_examples - n_junk
    n_good_topics = n_topics - n_junk_topics
    if n_good < n_good_topics or (n_junk_topics and n_junk < n_junk_topics):
        raise ValueError(f"{n_examples} examples with junk_fraction={junk_fraction} leave a topic empty")
    if n_validation < (n_good_topics if validation_topics == "good" else n_topics):
        raise ValueError(f"n_validation must be >= the number of validation topics, got {n_validation}")

    rng = np.random.default_rng(seed)
    facts_by_topic = []
    for topic in _TOPICS:
        facts = topic.facts(rng)
        facts_by_topic.append([facts[i] for i in rng.permutation(len(facts))])
    chosen = sorted(int(i) for i in rng.choice(len(_TOPICS), size=n_topics, replace=False))
    junk_topics = sorted(int(chosen[i]) for i in rng.choice(n_topics, size=n_junk_topics, replace=False))
    good_topics = [t for t in chosen if t not in junk_topics]
    # Each junk topic gets one style (so it stays one coherent cluster), cycling from a random start.
    start = int(rng.integers(len(JUNK_STYLES)))
    junk_styles = {t: JUNK_STYLES[(start + i) % len(JUNK_STYLES)] for i, t in enumerate(junk_topics)}

    # Held-out facts: at most half of a topic's facts. Training records: distinct (fact, question phrasing,
    # answer phrasing) combinations of the remaining facts (junk: (fact, question phrasing) only).
    valid_topics = good_topics if validation_topics == "good" else chosen
    valid_counts = dict(zip(valid_topics, _allocate(
        n_validation, [len(facts_by_topic[t]) // 2 for t in valid_topics], "validation items")))

    def train_capacity(t: int) -> int:
        n_facts = len(facts_by_topic[t]) - valid_counts.get(t, 0)
        n_answers = 1 if t in junk_styles else len(_TOPICS[t].responses)
        return n_facts * len(_TOPICS[t].prompts) * n_answers

    train_counts = dict(zip(good_topics, _allocate(n_good, [train_capacity(t) for t in good_topics],
                                                   "good training records")))
    if junk_topics:
        train_counts.update(zip(junk_topics, _allocate(n_junk, [train_capacity(t) for t in junk_topics],
                                                       "junk training records")))

    records, record_topic, record_answer, is_junk = [], [], [], []
    valid_facts: dict[int, list[dict]] = {}
    for t in chosen:
        topic, facts = _TOPICS[t], facts_by_topic[t]
        n_hold = valid_counts.get(t, 0)
        valid_facts[t] = facts[:n_hold]
        train_facts = facts[n_hold:]
        n_prompts, n_answers = len(topic.prompts), len(topic.responses)
        # Round r uses every fact once; a fact's rounds go through its (question, answer) phrasing pairs in
        # a random order, questions first, so the first len(train_facts) records are all distinct facts.
        prompt_order = [rng.permutation(n_prompts) for _ in train_facts]
        answer_order = [rng.permutation(n_answers) for _ in train_facts]
        for k in range(train_counts[t]):
            round_index, fact_index = divmod(k, len(train_facts))
            fact = train_facts[fact_index]
            prompt_round, answer_round = round_index % n_prompts, round_index // n_prompts
            instruction_t, input_t = topic.prompts[int(prompt_order[fact_index][prompt_round])]
            instruction, input_text = _render(instruction_t, fact), _render(input_t, fact)
            if t in junk_styles:
                output = _junk_response(junk_styles[t], fact["answer"], t, facts_by_topic, rng)
            else:
                output = _render(topic.responses[int(answer_order[fact_index][answer_round])], fact)
                if not answer_in_text(fact["answer"], output):  # pragma: no cover - template bug
                    raise AssertionError(f"topic {topic.name}: {output!r} does not contain {fact['answer']!r}")
            records.append({"instruction": instruction, "input": input_text, "output": output,
                            "category": topic.category})
            record_topic.append(topic.name)
            record_answer.append(fact["answer"])
            is_junk.append(t in junk_styles)

    order = rng.permutation(len(records))
    records = [records[i] for i in order]
    record_topic = [record_topic[i] for i in order]
    record_answer = [record_answer[i] for i in order]
    junk_indices = np.flatnonzero(np.asarray(is_junk, dtype=bool)[order]).astype(np.int64)
    if len({(r["instruction"], r["input"], r["output"]) for r in records}) != len(records):  # pragma: no cover
        raise AssertionError("internal error: duplicate training records")

    valid_records = _validation(valid_topics, valid_facts, facts_by_topic, validation_format, n_choices, rng)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_path, valid_path, meta_path = out / "train.jsonl", out / "valid.jsonl", out / "meta.json"
    meta = {
        "generator": "shed_jax.synthetic.make_demo",
        "seed": int(seed),
        "n_examples": int(n_examples),
        "n_junk": int(n_junk),
        "junk_fraction": float(junk_fraction),
        "n_validation": int(len(valid_records)),
        "validation_format": validation_format,
        "validation_topics": validation_topics,
        "files": {"train": train_path.name, "valid": valid_path.name},
        "topics": [{"name": _TOPICS[t].name, "category": _TOPICS[t].category, "junk": t in junk_styles,
                    "junk_style": junk_styles.get(t), "n_train": int(train_counts[t]),
                    "n_validation": int(valid_counts.get(t, 0))} for t in chosen],
        "junk_topics": [_TOPICS[t].name for t in junk_topics],
        "junk_indices": junk_indices.tolist(),
        "record_topics": record_topic,
        "record_answers": record_answer,
    }
    write_jsonl(train_path, records)
    write_jsonl(valid_path, valid_records)
    atomic_write_json(meta_path, meta)
    return DemoPaths(train=train_path, valid=valid_path, junk_indices=junk_indices, meta=meta,
                     meta_path=meta_path)


def _validation(valid_topics: list[int], valid_facts: dict[int, list[dict]], facts_by_topic: list[list[dict]],
                validation_format: str, n_choices: int, rng: np.random.Generator) -> list[dict]:
    """Validation records for the held-out facts of ``valid_topics``, shuffled."""
    items = []
    for t in valid_topics:
        topic = _TOPICS[t]
        for fact in valid_facts[t]:
            instruction_t, input_t = topic.prompts[int(rng.integers(len(topic.prompts)))]
            instruction, input_text = _render(instruction_t, fact), _render(input_t, fact)
            if validation_format == "instruction":
                output = _render(topic.responses[int(rng.integers(len(topic.responses)))], fact)
                items.append({"instruction": instruction, "input": input_text, "output": output,
                              "category": topic.category})
                continue
            correct = fact["answer"]
            taken = {correct.lower()}
            choices = [correct]
            same_topic = [f["answer"] for f in facts_by_topic[t] if f["answer"].lower() not in taken]
            if same_topic:
                pick = same_topic[int(rng.integers(len(same_topic)))]
                choices.append(pick)
                taken.add(pick.lower())
            others = [o for o in valid_topics if o != t] or [o for o in range(len(_TOPICS)) if o != t]
            for _ in range(1000 * n_choices):
                if len(choices) == n_choices:
                    break
                other_facts = facts_by_topic[others[int(rng.integers(len(others)))]]
                pick = other_facts[int(rng.integers(len(other_facts)))]["answer"]
                if pick.lower() not in taken:
                    choices.append(pick)
                    taken.add(pick.lower())
            if len(choices) < n_choices:  # pragma: no cover - the topics have far more distinct answers
                raise RuntimeError(f"could not find {n_choices} distinct choices for {topic.name!r}")
            choices = choices[:n_choices]
            perm = rng.permutation(len(choices))
            items.append({"question": _prompt_text(instruction, input_text),
                          "choices": [choices[i] for i in perm],
                          "answer": int(np.flatnonzero(perm == 0)[0]),
                          "subject": topic.name})
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    if validation_format == "multiple_choice":
        items = [{"id": f"demo-{i}", **item} for i, item in enumerate(items)]
    return items
