"""Progress and logs (issue 11): labelled bars, plain periodic lines when stderr is not a terminal, one
elapsed-time line per stage, the duplicates warning once with the policy in force."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from click.testing import CliRunner

from shed_jax import cli, synthetic
from shed_jax.progress import Bar, format_count, format_duration


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (2.34, "2.3 s"), (40, "40 s"), (59.4, "59 s"),
                                           (60, "1 min"), (72, "1 min 12 s"), (599, "9 min 59 s"),
                                           (1500, "25 min"), (8280, "2.3 h"), (float("nan"), "?")])
def test_durations_read_like_people_write_them(seconds, text):
    assert format_duration(seconds) == text


def test_counts_have_thousands_separators():
    assert format_count(15011) == "15,011" and format_count(7) == "7"


def test_a_plain_bar_writes_labelled_lines_without_carriage_returns(monkeypatch):
    monkeypatch.setenv("SHED_PROGRESS", "plain")
    monkeypatch.setenv("SHED_PROGRESS_SECONDS", "0")
    stream = io.StringIO()
    with Bar(1000, "embedding 1,000 records", unit="text", stream=stream) as bar:
        for _ in range(100):
            bar.update(10)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # one line per 10% step at most, none at 100% (the stage's "done in" line says that)
    assert len(lines) == 9, lines
    assert all(line.startswith("embedding 1,000 records: ") for line in lines)
    assert lines[0].startswith("embedding 1,000 records: 100/1,000 (10%)")


def test_a_plain_bar_waits_for_its_interval(monkeypatch):
    monkeypatch.setenv("SHED_PROGRESS", "plain")
    monkeypatch.setenv("SHED_PROGRESS_SECONDS", "3600")
    stream = io.StringIO()
    with Bar(100, "Shapley: 100 permutations", stream=stream) as bar:
        for _ in range(100):
            bar.update(1)
    assert stream.getvalue() == ""


def test_off_and_disabled_bars_write_nothing(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setenv("SHED_PROGRESS", "off")
    with Bar(10, "x", stream=stream) as bar:
        bar.update(10)
    monkeypatch.setenv("SHED_PROGRESS", "plain")
    with Bar(10, "x", stream=stream, enabled=False) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


@pytest.fixture
def duplicated_demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dupdemo")
    demo = synthetic.make_demo(directory, n_examples=200, n_topics=8, n_validation=40, seed=0)
    lines = demo.train.read_text(encoding="utf-8").splitlines()
    data = directory / "train_dup.jsonl"
    data.write_text("\n".join(lines + lines[:3]) + "\n", encoding="utf-8")
    return data, demo.valid


def test_refine_logs_labelled_plain_progress_and_one_elapsed_line_per_stage(duplicated_demo, tmp_path, monkeypatch):
    """The real embed_texts and Shapley engine run (the sentence encoder is the hashing stand-in, and the engine
    is asked for small chunks so that its bar has something to report); stderr is not a terminal."""
    from conftest import hashing_embed
    from shed_jax import embed as embed_module
    from shed_jax import shapley

    class Encoder:
        def encode(self, batch, **kwargs):
            return hashing_embed(list(batch))

    monkeypatch.setenv("SHED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SHED_PROGRESS_SECONDS", "0")
    monkeypatch.delenv("SHED_PROGRESS", raising=False)
    monkeypatch.setattr(embed_module, "_get_model", lambda *args, **kwargs: Encoder())
    real_monte_carlo = shapley.monte_carlo
    monkeypatch.setattr(shapley, "monte_carlo",
                        lambda utility, n, **kw: real_monte_carlo(utility, n, **{**kw, "permutations_per_chunk": 2}))
    data, valid = duplicated_demo
    result = CliRunner().invoke(cli.cli, [str(a) for a in [
        "refine", data, "--valid", valid, "--ratio", "0.2", "-o", tmp_path / "out.jsonl", "--run-dir",
        tmp_path / "run", "--clusters", "6", "--permutations", "10", "--batch-size", "16"]])
    assert result.exit_code == 0, (result.output, result.exception)
    err = result.stderr
    assert "\r" not in err
    lines = err.splitlines()
    duplicates = [line for line in lines if "duplicate record" in line]
    assert len(duplicates) == 1, duplicates
    assert "3 duplicate record(s)" in duplicates[0] and "dropped: never clustered or selected" in duplicates[0]
    assert "(--duplicates drop)" in duplicates[0]
    # labelled progress lines: what is done, done/total and the percentage
    assert any(re.match(r"embedding 203 records \(200 distinct\): \d+/200 \(\d+%\)", line) for line in lines), err
    assert any(re.match(r"Shapley: 10 permutations: \d+/10 \(\d+%\)", line) for line in lines), err
    assert any(re.match(r"embedding 40 validation questions: \d+/40", line) for line in lines), err
    # issue 21: the run times its own first chunk of permutations (no extra round) and says what remains
    assert any(re.match(r"value: 2 permutation\(s\) in .+; about .+ for the remaining 8$", line) for line in lines), err
    for stage in ("embed", "cluster", "value", "select"):
        done = [line for line in lines if line.startswith(f"{stage}: done in ")]
        assert len(done) == 1, (stage, lines)
    # no tqdm-style bars
    assert not any("it/s" in line or "|" in line for line in lines), err
    assert np.all([len(line) < 300 for line in lines])


def test_library_loading_bars_can_be_switched_off():
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from shed_jax.progress import quiet_library_bars

    was_transformers, was_hub = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    try:
        hf_logging.enable_progress_bar()
        hub_utils.enable_progress_bars()
        quiet_library_bars()
        assert not hf_logging.is_progress_bar_enabled() and hub_utils.are_progress_bars_disabled()
    finally:
        (hf_logging.enable_progress_bar if was_transformers else hf_logging.disable_progress_bar)()
        (hub_utils.enable_progress_bars if was_hub else hub_utils.disable_progress_bars)()


def test_the_embedding_proxy_shows_progress_while_it_embeds_the_players():
    """The value stage embeds the players' prompts and responses (and the validation set) when it builds the
    embedding proxy: minutes for large runs, so each gets a labelled progress bar when the run shows progress."""
    import types

    import numpy as np

    from conftest import hashing_embed
    from shed_jax.proxies.embedding import EmbeddingProxyConfig, build_embedding_proxy

    calls = []

    def embed(texts, *, progress=True, label=None):
        calls.append((label, progress))
        return hashing_embed(list(texts))

    validation = types.SimpleNamespace(questions=("q one", "q two"), choices=(("a", "b"), ("c", "d")),
                                       answers=np.array([0, 1]))
    inputs = types.SimpleNamespace(prompts=("p1", "p2", "p3"), responses=("r1", "r2", "r3"), records=(),
                                   embeddings=None, validation=validation, seed=0, progress=True, embed=embed)
    build_embedding_proxy(inputs, EmbeddingProxyConfig())
    labels = [label for label, progress in calls if progress]
    assert "embedding the 3 players' prompts" in labels and "embedding the 3 players' responses" in labels
    assert any("validation" in (label or "") for label in labels)
