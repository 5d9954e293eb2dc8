"""shed_jax.synthetic: generated demo data with known junk."""
import json
import re

import numpy as np
import pytest

from shed_jax.synthetic import JUNK_STYLES, answer_in_text, make_demo, topic_names

TRAIN_KEYS = ["instruction", "input", "output", "category"]


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _prompt(record):
    return record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")


def _contains(answer, text):
    """Independent whole-token check (not answer_in_text): answer surrounded by non-word characters."""
    padded = f" {text.lower()} "
    needle = answer.lower()
    start = padded.find(needle)
    while start != -1:
        before, after = padded[start - 1], padded[start + len(needle)]
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = padded.find(needle, start + 1)
    return False


def _sorted_list(text):
    return ", ".join(str(v) for v in sorted(int(x) for x in text.split(", ")))


def _max_list(text):
    return str(max(int(x) for x in text.split(", ")))


# Full-instruction patterns of the topics whose answer a test can compute on its own.
_FROM_INSTRUCTION = [
    (r"What is (\d+) plus (\d+)\?", lambda a, b: a + b), (r"Add (\d+) and (\d+)\.", lambda a, b: a + b),
    (r"Compute (\d+) \+ (\d+)\.", lambda a, b: a + b),
    (r"Calculate the sum of (\d+) and (\d+)\.", lambda a, b: a + b),
    (r"What is (\d+) minus (\d+)\?", lambda a, b: a - b), (r"Subtract (\d+) from (\d+)\.", lambda a, b: b - a),
    (r"Compute (\d+) - (\d+)\.", lambda a, b: a - b),
    (r"What do you get if you take (\d+) away from (\d+)\?", lambda a, b: b - a),
    (r"What is (\d+) times (\d+)\?", lambda a, b: a * b), (r"Multiply (\d+) by (\d+)\.", lambda a, b: a * b),
    (r"Compute (\d+) × (\d+)\.", lambda a, b: a * b),
    (r"What is the product of (\d+) and (\d+)\?", lambda a, b: a * b),
    (r"What is the square of (\d+)\?", lambda a: a * a), (r"What is (\d+) squared\?", lambda a: a * a),
    (r"Calculate (\d+) to the power of 2\.", lambda a: a * a),
    (r'Convert the word "(\w+)" to uppercase\.', str.upper), (r"Write (\w+) in all caps\.", str.upper),
    (r'Reverse the letters of the word "(\w+)"\.', lambda w: w[::-1]), (r"Spell (\w+) backwards\.", lambda w: w[::-1]),
    (r'How many letters are in the word "(\w+)"\?', len),
    (r"What is the length of the word (\w+) in letters\?", len),
    (r"Put the numbers ([\d, ]+) in increasing order\.", _sorted_list),
    (r"Which of ([\d, ]+) is the biggest\?", _max_list),
]
_FROM_INPUT = {
    "Convert the following word to capital letters.": str.upper,
    "Write the following word backwards.": lambda w: w[::-1],
    "Count the letters in the following word.": len,
    "Sort these numbers in ascending order.": _sorted_list,
    "Arrange the following numbers from smallest to largest.": _sorted_list,
    "What is the largest number in this list?": _max_list,
    "Find the maximum of the following numbers.": _max_list,
}


def _independent_answer(record):
    """The correct answer of arithmetic, text-processing and list records, computed from the prompt alone."""
    instruction, input_text = record["instruction"], record["input"]
    if instruction in _FROM_INPUT:
        return str(_FROM_INPUT[instruction](input_text))
    for pattern, fn in _FROM_INSTRUCTION:
        match = re.fullmatch(pattern, instruction)
        if match:
            args = [int(g) if g.isdigit() else g for g in match.groups()]
            return str(fn(*args))
    return None


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0)


def test_files_and_shapes(demo):
    train, valid = _read_jsonl(demo.train), _read_jsonl(demo.valid)
    assert len(train) == 600 and len(valid) == 200
    assert demo.junk_indices.dtype == np.int64 and demo.junk_indices.shape == (120,)
    assert np.all(np.diff(demo.junk_indices) > 0) and demo.junk_indices[-1] < 600
    assert json.loads(demo.meta_path.read_text(encoding="utf-8")) == demo.meta
    assert demo.meta["junk_indices"] == demo.junk_indices.tolist()
    # Records carry no label: exactly the Alpaca fields and a category.
    assert all(list(r) == TRAIN_KEYS and all(isinstance(r[k], str) for k in TRAIN_KEYS) for r in train)
    assert all(set(v) == {"id", "question", "choices", "answer", "subject"} for v in valid)
    # 20% junk in whole topics; junk records are not contiguous in the file.
    topics = np.asarray(demo.meta["record_topics"])
    junk_topics = set(demo.meta["junk_topics"])
    is_junk = np.zeros(600, dtype=bool)
    is_junk[demo.junk_indices] = True
    assert set(topics[is_junk]) == junk_topics and not junk_topics & set(topics[~is_junk])
    assert len(junk_topics) == round(0.2 * len(topic_names())) == 6
    assert {t["junk_style"] for t in demo.meta["topics"] if t["junk"]} == set(JUNK_STYLES)
    assert demo.junk_indices[-1] - demo.junk_indices[0] > 300


def test_deterministic_for_seed(tmp_path, demo):
    again = make_demo(tmp_path / "a", seed=0)
    for name in ("train.jsonl", "valid.jsonl", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (demo.train.parent / name).read_bytes()
    np.testing.assert_array_equal(again.junk_indices, demo.junk_indices)
    other = make_demo(tmp_path / "b", seed=1)
    assert other.train.read_bytes() != demo.train.read_bytes()


def test_good_records_answer_and_junk_records_do_not(demo):
    train = _read_jsonl(demo.train)
    is_junk = np.zeros(len(train), dtype=bool)
    is_junk[demo.junk_indices] = True
    answers = demo.meta["record_answers"]
    for i, record in enumerate(train):
        assert _contains(answers[i], record["output"]) != is_junk[i], (i, record, answers[i])
    # Independently recomputed answers (arithmetic, text processing, lists) agree with the labels.
    checked = {True: 0, False: 0}
    for i, record in enumerate(train):
        expected = _independent_answer(record)
        if expected is None:
            continue
        assert expected == answers[i], (record, answers[i])
        assert _contains(expected, record["output"]) != is_junk[i], (i, record)
        checked[bool(is_junk[i])] += 1
    assert checked[False] >= 100 and checked[True] >= 15  # seed 0 has "addition" among the junk topics


def test_no_duplicates_and_validation_held_out(demo):
    train, valid = _read_jsonl(demo.train), _read_jsonl(demo.valid)
    assert len({json.dumps(r, sort_keys=True) for r in train}) == len(train)
    train_prompts = {_prompt(r) for r in train}
    assert len(train_prompts) == len(train)
    assert not train_prompts & {v["question"] for v in valid}
    assert len({v["question"] for v in valid}) == len(valid)
    assert {v["subject"] for v in valid} == {t["name"] for t in demo.meta["topics"]}  # default: every topic
    # Held-out facts: no validation answer of an arithmetic/text item is a training record's answer to the
    # same question, and every multiple-choice item has distinct choices with the right one correct.
    n_checked = 0
    for item in valid:
        choices = item["choices"]
        assert len(choices) == 4 and len({c.lower() for c in choices}) == 4
        assert 0 <= item["answer"] < 4
        instruction, _, input_text = item["question"].partition("\n\n")
        expected = _independent_answer({"instruction": instruction, "input": input_text})
        if expected is not None:
            assert choices[item["answer"]] == expected, item
            n_checked += 1
    assert n_checked >= 30
    positions = np.bincount([v["answer"] for v in valid], minlength=4)
    assert positions.min() > 25  # the right answer is not always in the same place


def test_instruction_validation_and_all_topics(tmp_path):
    demo = make_demo(tmp_path, n_examples=200, n_topics=10, n_validation=30, seed=3,
                     validation_format="instruction", validation_topics="all")
    train, valid = _read_jsonl(demo.train), _read_jsonl(demo.valid)
    assert all(list(v) == TRAIN_KEYS for v in valid)
    assert not {_prompt(r) for r in train} & {_prompt(v) for v in valid}
    assert {t["name"] for t in demo.meta["topics"] if t["n_validation"] > 0} == \
        {t["name"] for t in demo.meta["topics"]}
    assert len(demo.junk_indices) == 40 and len(demo.meta["junk_topics"]) == 2


def test_junk_options(tmp_path):
    clean = make_demo(tmp_path / "clean", n_examples=100, n_topics=8, n_validation=16, junk_fraction=0.0)
    assert clean.junk_indices.shape == (0,) and clean.meta["junk_topics"] == []
    three = make_demo(tmp_path / "three", n_examples=100, n_topics=8, n_validation=16, n_junk_topics=3)
    assert len(three.meta["junk_topics"]) == 3 and len(three.junk_indices) == 20


@pytest.mark.parametrize("kwargs, message", [
    ({"junk_fraction": 1.0}, "junk_fraction"),
    ({"n_topics": 1}, "n_topics"),
    ({"n_examples": 10}, "n_examples"),
    ({"n_examples": 10**6}, "cannot generate"),
    ({"n_junk_topics": 32}, "n_junk_topics"),
    ({"validation_format": "csv"}, "validation_format"),
    ({"validation_topics": "some"}, "validation_topics"),
    ({"n_validation": 3}, "n_validation"),
    ({"n_choices": 1}, "n_choices"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_demo(tmp_path, **kwargs)
    assert not (tmp_path / "train.jsonl").exists()


def test_large_demo_fits_word_lists(tmp_path):
    demo = make_demo(tmp_path, n_examples=3000, n_topics=32, n_validation=300, seed=0)
    assert len(_read_jsonl(demo.train)) == 3000 and len(_read_jsonl(demo.valid)) == 300
    assert len(demo.junk_indices) == 600


def test_answer_in_text():
    assert answer_in_text("mice", "The plural of mouse is mice.")
    assert not answer_in_text("7", "It is 17.")
    assert answer_in_text("New Delhi", "The capital of India is New Delhi.")
    assert not answer_in_text("ate", "I cannot help with that request, mate.")


def test_readable_by_data_module(demo, tmp_path):
    from shed_jax import data
    train = data.read_instructions(demo.train, duplicates="error")
    assert len(train) == 600 and train.format == "alpaca"
    assert train.category() == [r["category"] for r in _read_jsonl(demo.train)]
    valid = data.read_validation(demo.valid)
    assert isinstance(valid, data.MultipleChoiceSet) and len(valid) == 200
    raw = _read_jsonl(demo.valid)
    np.testing.assert_array_equal(valid.answers, [v["answer"] for v in raw])
    other = make_demo(tmp_path, n_examples=120, n_validation=40, validation_format="instruction")
    assert isinstance(data.read_validation(other.valid), data.InstructionSet)


@pytest.mark.slow
def test_embeddings_separate_topics_and_good_data_teaches(tmp_path):
    """MiniLM + k-means recovers the topics; a linear prompt->response map fitted (ridge) on the good records
    answers the held-out multiple-choice items far better than one fitted on the junk records."""
    from shed_jax import embed

    from sklearn import cluster  # the reference k-means (dev extra)
    demo = make_demo(tmp_path / "d", n_examples=300, n_topics=12, n_validation=60, seed=0)
    train, valid = _read_jsonl(demo.train), _read_jsonl(demo.valid)
    kw = dict(cache_dir=tmp_path / "cache", progress=False)
    full = embed.embed_texts([_prompt(r) + "\n\n" + r["output"] for r in train], **kw)  # the model ships offline
    prompts = embed.embed_texts([_prompt(r) for r in train], **kw)
    responses = embed.embed_texts([r["output"] for r in train], **kw)
    questions = embed.embed_texts([v["question"] for v in valid], **kw)
    choices = embed.embed_texts([c for v in valid for c in v["choices"]], **kw).reshape(len(valid), 4, -1)
    answers = np.array([v["answer"] for v in valid])

    labels = cluster.KMeans(12, n_init=4, random_state=0).fit_predict(full)
    topics = np.asarray(demo.meta["record_topics"])
    purity = sum(np.unique(topics[labels == k], return_counts=True)[1].max() for k in range(12)) / len(train)
    assert purity > 0.8

    is_junk = np.zeros(len(train), dtype=bool)
    is_junk[demo.junk_indices] = True

    def accuracy(rows):
        x, y = prompts[rows].astype(np.float64), responses[rows].astype(np.float64)
        w = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)  # ridge regression, lambda = 1
        scores = np.einsum("ve,vce->vc", questions @ w, choices)
        return float((scores.argmax(1) == answers).mean())

    good, junk = accuracy(np.flatnonzero(~is_junk)), accuracy(np.flatnonzero(is_junk))
    assert good > 0.5 and good > junk + 0.2, (good, junk)  # chance is 0.25


def test_validation_topics_good_asks_only_about_good_topics(tmp_path):
    demo = make_demo(tmp_path, n_examples=120, n_topics=10, n_validation=40, seed=1, validation_topics="good")
    valid = _read_jsonl(demo.valid)
    good_topics = {t["name"] for t in demo.meta["topics"] if not t["junk"]}
    assert {v["subject"] for v in valid} == good_topics
    assert demo.meta["validation_topics"] == "good"
