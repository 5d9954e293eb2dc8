"""bench/gpu_check.sh (issue 18's accelerator check) end to end in its --tiny CPU mode, and its argument errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, SHED_GPU_CHECK_DATA="/nonexistent-gpu-check-data")
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_arguments_exit_2_with_one_line():
    done = _run("--sections", "parity,speed")
    assert done.returncode == 2
    assert "--sections: unknown speed" in done.stderr.strip().splitlines()[-1]
    done = _run("--records", "0")
    assert done.returncode == 2 and "--records: must be >= 1" in done.stderr


def test_missing_data_is_refused_without_the_small_mode(tmp_path):
    done = _run("--data", tmp_path, "--out", tmp_path / "out.json", "--model", tmp_path)
    assert done.returncode != 0 and "dolly15k.jsonl" in done.stderr and "not found" in done.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_tiny_mode_runs_every_section_and_writes_the_json(tmp_path):
    """The whole script on a CPU with a tiny random Llama and synthetic records (no data folder): every section
    runs, the table is printed and the JSON holds each measurement (values checked for sense, not speed)."""
    out = tmp_path / "gpu_check.json"
    done = _run("--tiny", "--out", out, "--work-dir", tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LM proxy / transformers + peft" in done.stdout and f"wrote {out}" in done.stdout
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["backend"] == "cpu"
    sections = result["sections"]
    assert set(sections) == {"parity", "utility_agreement", "throughput", "refine"}
    assert not any("error" in s for s in sections.values()), {k: s.get("error") for k, s in sections.items()}

    parity = sections["parity"]
    assert parity["float32"]["max_rel_logit_diff"] < 1e-5          # the README's float32 parity (~1e-6)
    assert parity["float32"]["top1_agreement"] == 1.0
    for key in ("bfloat16_vs_transformers_bfloat16", "bfloat16_vs_transformers_float32"):
        assert 0 < parity[key]["max_rel_logit_diff"] < 5e-2        # bfloat16 round-off, not a bug

    agree = sections["utility_agreement"]
    assert len(agree["values_float32"]) == len(agree["values_bfloat16"]) == agree["coalitions"] == 6
    assert -1.0 <= agree["spearman"] <= 1.0 and agree["max_abs_diff"] >= 0

    thr = sections["throughput"]
    assert thr["coalition_steps_per_s"] > 0 and thr["coalition_steps"] == thr["n_slots"] * 2
    assert 0 < thr["real_tokens"] <= thr["computed_tokens"] and 0 < thr["real_token_share"] <= 1
    assert thr["mfu_real_tokens"] is None and thr["peak_tflops"] is None    # no known peak for a CPU
    assert thr["peft"]["coalition_steps_per_s"] > 0 and thr["speedup_vs_peft"] > 0

    refine = sections["refine"]
    assert refine["exit_code"] == 0 and set(refine["stage_seconds"]) >= {"embed", "cluster", "value", "select"}
    assert all(s is None or s >= 0 for s in refine["stage_seconds"].values())
