"""bench/bench_pydvl.py (row 2 of issue 20): the --quick path without pyDVL, the analysis, the utility on both
sides, and (when ``.venv-pydvl`` exists) pyDVL's side in its own environment."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _venv_python():
    named = os.environ.get("SHED_PYDVL_PYTHON")
    python = Path(named) if named else ROOT / ".venv-pydvl" / "bin" / "python"
    return python if python.exists() else None


def test_quick_without_pydvl_runs_the_shed_side_and_says_why(tmp_path):
    out = tmp_path / "quick.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), SHED_PYDVL_PYTHON=str(tmp_path / "no-such-python"))
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "pydvl", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads(out.read_text())["benchmarks"][0]
    assert entry["name"] == "pydvl" and entry["status"] == "ok", entry
    assert "no-such-python" in entry["info"]["pydvl_skipped"] and "setup_pydvl.sh" in entry["info"]["pydvl_skipped"]
    book = entry["info"]["datasets"]["breast_cancer"]
    assert book["reference"]["kind"] == "exact enumeration"
    assert book["repeats"][0]["pydvl"] == {}
    summary = entry["summary"]
    assert summary["breast_cancer_shed_evals_per_s"]["median"] > 0
    assert summary["breast_cancer_shed_antithetic_s_to_0.002"]["median"] > 0
    assert not any("pydvl" in name or "ratio" in name for name in summary)


def test_full_mode_without_pydvl_is_skipped_with_the_reason(monkeypatch, tmp_path):
    from bench import bench_pydvl
    from bench.runner import Skip

    monkeypatch.setenv("SHED_PYDVL_PYTHON", str(tmp_path / "absent" / "python"))
    with pytest.raises(Skip, match="absent.*setup_pydvl.sh"):
        bench_pydvl.run(quick=False, repeats=1)


def test_time_to_targets_reads_the_fitted_monte_carlo_curve():
    from bench.bench_pydvl import time_to_targets

    c = 0.5  # rmse = c / sqrt(evaluations), 1000 evaluations/s after 2 s of start-up
    evals = np.arange(1, 21) * 1000.0
    points = [{"evaluations": e, "seconds": 2.0 + e / 1000.0, "rmse": c / np.sqrt(e)} for e in evals]
    out = time_to_targets(points, targets=(0.005, 0.002))
    assert out["c"] == pytest.approx(c)
    inside = out["0.005"]  # needs (0.5/0.005)^2 = 10,000 evaluations: inside the run
    assert inside["evaluations"] == pytest.approx(10_000) and not inside["extrapolated"]
    assert inside["seconds"] == pytest.approx(12.0)
    assert inside["measured_seconds"] == pytest.approx(12.0)
    beyond = out["0.002"]  # 62,500 evaluations: past the run's 20,000, at its steady 1000/s
    assert beyond["extrapolated"] and beyond["evaluations"] == pytest.approx(62_500)
    assert beyond["seconds"] == pytest.approx(2.0 + 62.5)
    assert beyond["measured_seconds"] is None


def test_the_two_sides_compute_the_same_utility():
    from bench.bench_pydvl import SETTINGS, ArrayLogisticUtility, breast_cancer, utility_agreement

    data = breast_cancer(30)
    utility = ArrayLogisticUtility(data["x_train"], data["y_train"], data["x_val"], data["y_val"], **SETTINGS)
    agreement = utility_agreement(utility, None, data, 30, count=24)
    # accuracies are multiples of 1 / n_val: any disagreement on a prediction would differ by >= 1/539
    assert agreement["max_abs_diff"] < 1e-6, agreement
    empty = np.zeros((1, 30), bool)
    assert float(utility(empty)[0]) == 0.0  # pyDVL's ModelUtility scores the empty set 0 (the scorer's default)


@pytest.mark.skipif(_venv_python() is None, reason="pyDVL's environment (.venv-pydvl) is absent: "
                    "bash bench/setup_pydvl.sh makes it")
def test_pydvl_side_runs_in_its_environment():
    from bench.bench_pydvl import breast_cancer, pydvl_python, run_pydvl

    data = breast_cancer(8)
    out = run_pydvl(pydvl_python(), data, [{"n_jobs": 1, "permutations": 3, "seed": 0, "max_seconds": 60.0}],
                    timeout=240)
    assert out["versions"]["pyDVL"] == "0.10.0"
    (run,) = out["runs"]
    assert run["permutations_done"] >= 1 and run["evaluations"] == run["permutations_done"] * 8
    assert len(run["trajectory"]) == run["permutations_done"]
    # permutation Monte Carlo telescopes: every permutation's marginals sum to U(all) - U(empty) = U(all)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from pydvl_side import GDLogisticRegression, accuracy
    finally:
        sys.path.pop(0)
    model = GDLogisticRegression().fit(data["x_train"], data["y_train"])
    assert sum(run["values"]) == pytest.approx(accuracy(model, data["x_val"], data["y_val"]), abs=1e-6)


def test_the_dual_game_has_the_same_shapley_values():
    """shed_jax's TMC setting runs on U*(S) = U(N) - U(N minus S): exact enumeration of both games agrees."""
    from bench.bench_pydvl import SETTINGS, ArrayLogisticUtility, DualUtility, breast_cancer
    from shed_jax import shapley

    data = breast_cancer(9)
    utility = ArrayLogisticUtility(data["x_train"], data["y_train"], data["x_val"], data["y_val"], **SETTINGS)
    dual = DualUtility(utility)
    full, empty = np.ones((1, 9), bool), np.zeros((1, 9), bool)
    assert float(dual(empty)[0]) == 0.0 and float(dual(full)[0]) == pytest.approx(float(utility(full)[0]))
    primal = np.asarray(shapley.exact(utility, 9), np.float64)
    assert np.abs(primal).max() > 0.01  # not a degenerate game
    np.testing.assert_allclose(np.asarray(shapley.exact(dual, 9), np.float64), primal, atol=1e-6)
