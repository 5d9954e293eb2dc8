"""The report's "Does the selection help?" section (shed_jax/report/_compare.py) from RUN_DIR/compare.json."""
from __future__ import annotations

import json

from shed_jax.compare import Comparison
from shed_jax.report import write_report


def _row(train, records, mean, lo, hi, vs_random=None, vs_full=None):
    return {"train": train, "records": records, "mean": mean, "ci95": [lo, hi], "vs_random": vs_random,
            "vs_full": vs_full}


PAYLOAD = {
    "recipe": {"model": "tiny<model>", "rank": 8, "alpha": 16.0, "learning_rate": 0.001, "batch_size": 4,
               "max_length": 128, "seeds": 3, "match": "compute", "steps_per_set": {"full": 10, "random": 10,
                                                                                    "shed": 10}},
    "sets": [],
    "evals": [{"name": "heldout", "metric": "loss", "higher_is_better": False, "n_items": 300,
               "overlap": {"per_set": {"full": 2}, "items": 2, "excluded": True},
               "rows": [_row("full", 3000, 2.10, 2.05, 2.15, {"diff": -0.04, "ci95": [-0.06, -0.02]}),
                        _row("random", 600, 2.14, 2.09, 2.19, None, {"diff": 0.04, "ci95": [0.02, 0.06]}),
                        _row("shed", 600, 2.12, 2.07, 2.17, {"diff": -0.02, "ci95": [-0.05, 0.01]},
                             {"diff": 0.02, "ci95": [0.0001, 0.04]}),
                        _row("untuned", 0, 2.50, 2.44, 2.56)]},
              {"name": "mmlu", "metric": "mc_letter_accuracy", "higher_is_better": True, "n_items": 400,
               "rows": [_row("shed", 600, 0.25, 0.21, 0.29, {"diff": 0.01, "ci95": [-0.02, 0.04]}),
                        _row("random", 600, 0.24, 0.20, 0.28)]}],
}


def _run_dir(tmp_path):
    """A directory that `shed report` accepts as a run (it refuses others): only a run.json so far."""
    (tmp_path / "run.json").write_text("{}")
    return tmp_path


def test_the_section_renders_bars_recipe_and_paired_differences(tmp_path):
    _run_dir(tmp_path)
    path = Comparison.from_json(PAYLOAD).save(tmp_path)
    assert json.loads(path.read_text())["evals"][0]["rows"][2]["train"] == "shed"
    page = write_report(tmp_path).read_text()
    start = page.index('<section id="compare">')
    section = page[start:page.index("</section>", start)]
    assert "Does the selection help?" in section
    assert section.count('<img alt="comparison bars" src="data:image/png;base64,') == 1
    assert "tiny&lt;model&gt;" in section and "tiny<model>" not in section      # escaped recipe
    assert "steps: full 10, random 10, shed 10" in section
    assert "-0.020 [-0.050, +0.010]</td>" in section                            # shed vs random: includes 0
    assert "+0.020 [+0.000, +0.040] *</td>" in section                          # shed vs full: excludes 0
    assert "25.0% [21.0%, 29.0%]" in section and "+1.000 pt [-2.000, +4.000]" in section
    assert "2 test item(s) also appear in a training set and were dropped." in section


def test_no_comparison_gives_no_section_and_a_bad_file_a_note(tmp_path):
    _run_dir(tmp_path)
    page = write_report(tmp_path).read_text()
    assert 'id="compare"' not in page
    (tmp_path / "compare.json").write_text(json.dumps({"recipe": {}, "evals": [{"metric": "loss"}]}))
    page = write_report(tmp_path).read_text()
    assert "compare.json could not be read" in page and "evals[0]" in page
