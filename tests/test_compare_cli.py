"""`shed compare` end to end on a small demo run (tiny random Llama checkpoint, fake embeddings): the table,
--json, RUN_DIR/compare.json, --train files, and bad input (exit 2, one line, nothing written)."""
from __future__ import annotations

import json

import pytest

from _helpers import invoke, write_tiny_checkpoint
from shed_jax.demo import synthetic

SMALL = ["--steps", "2", "--seeds", "2", "--batch-size", "2", "--max-length", "48", "--prompt-format", "alpaca",
         "--max-eval", "6", "--bootstrap", "100", "--rank", "2", "--dtype", "float32", "-q"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), seed=5)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A finished demo run (refine with the embedding proxy on hashing embeddings) and held-out test files."""
    from conftest import hashing_embed
    from shed_jax import embed as embed_module

    root = tmp_path_factory.mktemp("compare")
    demo = synthetic.make_demo(root / "demo", n_examples=40, n_topics=4, n_validation=8, seed=0)
    held_out = synthetic.make_demo(root / "held", n_examples=8, n_topics=4, n_validation=6,
                                   validation_format="instruction", seed=1)
    saved = embed_module.embed_texts
    embed_module.embed_texts = lambda texts, **_: hashing_embed(list(texts))
    try:
        result = invoke(["refine", demo.train, "--valid", demo.valid, "--ratio", "0.25", "--clusters", "4",
                         "--permutations", "2", "--run-dir", root / "run", "-o", root / "out.jsonl", "-q"])
    finally:
        embed_module.embed_texts = saved
    assert result.exit_code == 0, result.output
    return root / "run", demo, held_out


def test_compare_a_demo_run(checkpoint, demo_run):
    run_dir, demo, held = demo_run
    result = invoke(["compare", run_dir, "--eval", demo.valid, "--eval", f"heldout={held.valid}",
                     "--model", checkpoint, *SMALL, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [(e["name"], e["metric"]) for e in payload["evals"]] == [
        ("valid", "mc_letter_accuracy"), ("valid", "mc_choice_accuracy"), ("heldout", "loss")]
    for ev in payload["evals"]:
        assert [r["train"] for r in ev["rows"]] == ["full", "random", "shed", "untuned"]
        for row in ev["rows"]:
            assert row["ci95"][0] <= row["mean"] <= row["ci95"][1]
            assert set(row) >= {"train", "records", "mean", "ci95", "vs_random", "vs_full"}
    rows = {r["train"]: r for r in payload["evals"][2]["rows"]}
    assert rows["full"]["records"] == 40 and rows["shed"]["records"] == rows["random"]["records"] == 10
    assert rows["shed"]["vs_random"]["diff"] == pytest.approx(rows["shed"]["mean"] - rows["random"]["mean"])
    assert payload["recipe"]["steps_per_set"] == {"full": 2, "random": 2, "shed": 2}
    assert payload["recipe"]["model"] == str(checkpoint)
    saved = json.loads((run_dir / "compare.json").read_text())
    assert saved["evals"] == payload["evals"]
    from shed_jax.compare import Comparison

    assert Comparison.load(run_dir).evals[0]["metric"] == "mc_letter_accuracy"
    # the terminal table (the same payload, printed without --json)
    from shed_jax.cli_compare import table_lines

    text = "\n".join(table_lines(payload))
    assert "heldout: loss (lower is better), " in text and "vs random" in text and "untuned" in text
    assert f"{100 * rows['shed']['mean']:.1f}" not in text  # loss is printed as a loss, not a percentage
    assert f"{payload['evals'][0]['rows'][0]['mean'] * 100:.1f}%" in text


def test_compare_training_files(checkpoint, demo_run, tmp_path):
    run_dir, demo, held = demo_run
    records = [json.loads(line) for line in open(demo.train)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:6]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[6:12]))
    result = invoke(["compare", "--train", tmp_path / "a.jsonl", "--train", f"random={tmp_path / 'b.jsonl'}",
                     "--eval", held.valid, "--model", checkpoint, *SMALL, "--json"])
    assert result.exit_code == 0, result.output
    (ev,) = json.loads(result.output)["evals"]
    rows = {r["train"]: r for r in ev["rows"]}
    assert list(rows) == ["a", "random", "untuned"] and rows["a"]["vs_full"] is None
    assert rows["a"]["vs_random"] is not None
    assert not any(p.name == "compare.json" for p in tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--methods", "full,best"], "unknown method 'best'"),
    (["--model", "/nonexistent/model"], "--model"),
    (["--seeds", "0"], "--seeds"),
    (["--eval", "/nonexistent.jsonl"], "nonexistent.jsonl"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(checkpoint, demo_run, args, message):
    run_dir, demo, held = demo_run
    before = sorted(p.name for p in run_dir.iterdir())
    (run_dir / "compare.json").unlink(missing_ok=True)
    before = sorted(p.name for p in run_dir.iterdir())
    base = ["compare", run_dir, "--eval", held.valid, "--model", checkpoint, *SMALL]
    result = invoke(base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_run_dir_problems_are_one_line(checkpoint, demo_run, tmp_path):
    run_dir, demo, held = demo_run
    result = invoke(["compare", tmp_path, "--eval", held.valid, "--model", checkpoint, "-q"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    # a run directory without a selection
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "selection.json").unlink()
    result = invoke(["compare", copy, "--eval", held.valid, "--model", checkpoint, "-q"])
    assert result.exit_code == 2 and "no selection.json" in result.output
    # an empty selection
    (copy / "selection.json").write_text(json.dumps({"indices": [], "sampler": "qocs", "budget": 0}))
    result = invoke(["compare", copy, "--eval", held.valid, "--model", checkpoint, "-q"])
    assert result.exit_code == 2 and "selection is empty" in result.output
    assert not (copy / "compare.json").exists()
    # neither a run nor training files; no test set
    assert invoke(["compare", "--eval", held.valid]).exit_code == 2
    assert invoke(["compare", run_dir]).exit_code == 2
