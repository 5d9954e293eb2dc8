"""Golden outputs of a refine run, to prove that refactors leave results unchanged on any machine.

What a run decides is split in two:

- **Discrete** (exact): cluster labels and proxies, the selected indices, the number of utility
  evaluations, the selected records' bytes, and the integer/bool fields of every scores line
  (``index``, ``cluster``, ``is_proxy``, ``selected``). These are hashed (SHA-256) and must match bit for bit.
- **Floats** (within a stated tolerance): centroids, cluster values, their standard errors, U(full) and
  U(empty), and the ``value``/``stderr`` fields of the run's ``scores.jsonl`` and of the output's
  ``.scores.jsonl`` sidecar. XLA's CPU code (and torch's) round differently on different processors, so
  these are stored as arrays (``tests/golden/NAME.npz``) and compared with ``numpy.allclose``.

Tolerances (:func:`float_tolerances`) come from the size of what is compared. The utility is computed in
float32, so one utility value carries a rounding error of a few units in the last place of its size,
``eps32 * U_scale`` with ``U_scale = max(|U(full)|, |U(empty)|)``; a Shapley value is a mean of differences of
such values, so its error is of the same order. We allow ``64 * eps32 * U_scale`` for values and standard
errors (about 5e-6 for the demo, whose U is about 0.7) and ``64 * eps32 * max|centroid|`` for centroids
(float32 means). Measured on one Intel Xeon by forcing other instruction sets (``XLA_FLAGS=--xla_cpu_max_isa=
AVX2`` / ``SSE4_2`` with ``ATEN_CPU_CAPABILITY``): values moved by at most 1.2e-8 and centroids not at all,
so the bound leaves a margin of about 400x, and it is still about 1/4,000 of the largest demo value: a change
of the estimator, the proxy or the data moves values by far more (``tests/test_golden.py`` proves that the
comparison catches a change just above the bound and a single changed label).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
ULPS = 64


def _array_sha(array) -> str:
    array = np.ascontiguousarray(array)
    head = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()


def _file_sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _scores(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(sha of the discrete fields, values, stderrs) of a scores JSON-lines file."""
    discrete, values, stderr = [], [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        discrete.append([row["index"], row["cluster"], int(row["is_proxy"]), int(row["selected"])])
        values.append(np.nan if row["value"] is None else row["value"])
        stderr.append(np.nan if row.get("stderr") is None else row["stderr"])
    return (_array_sha(np.asarray(discrete, np.int64).reshape(-1, 4)),
            np.asarray(values, np.float64), np.asarray(stderr, np.float64))


def digest(run_dir, output) -> tuple[dict, dict[str, np.ndarray]]:
    """``(exact, floats)`` of a finished refine run: hashes of what is discrete, arrays of what is float."""
    run_dir, output = Path(run_dir), Path(output)
    with np.load(run_dir / "clusters.npz", allow_pickle=False) as npz:
        centroids = np.asarray(npz["centroids"], np.float64)
        exact = {"labels": _array_sha(npz["labels"]), "proxy_index": _array_sha(npz["proxy_index"])}
    values = json.loads((run_dir / "values.json").read_text(encoding="utf-8"))
    selection = json.loads((run_dir / "selection.json").read_text(encoding="utf-8"))
    sidecar = output.with_name(output.name[: -len(".jsonl")] + ".scores.jsonl")
    run_scores_sha, run_values, run_stderr = _scores(run_dir / "scores.jsonl")
    sidecar_sha, sidecar_values, sidecar_stderr = _scores(sidecar)
    exact.update({"n_evaluations": int(values["n_evaluations"]),
                  "selection": _array_sha(np.asarray(selection["indices"], np.int64)),
                  "run_scores_discrete": run_scores_sha, "sidecar_discrete": sidecar_sha,
                  "output": _file_sha(output)})
    floats = {"centroids": centroids,
              "cluster_values": np.asarray(values["cluster_values"], np.float64),
              "stderr": np.asarray([np.nan if s is None else s for s in values["stderr"]], np.float64),
              "u_full_empty": np.asarray([values["u_full"], values["u_empty"]], np.float64),
              "run_scores_value": run_values, "run_scores_stderr": run_stderr,
              "sidecar_value": sidecar_values, "sidecar_stderr": sidecar_stderr}
    return exact, floats


def float_tolerances(floats: dict[str, np.ndarray]) -> dict[str, float]:
    """Absolute tolerance per float array, from the size of what it holds (see the module docstring)."""
    u_scale = float(np.max(np.abs(floats["u_full_empty"])))
    value_tol = ULPS * EPS32 * max(u_scale, 1e-3)
    centroid_tol = ULPS * EPS32 * max(float(np.max(np.abs(floats["centroids"]))), 1e-3)
    return {name: (centroid_tol if name == "centroids" else value_tol) for name in floats}


def compare(expected: tuple[dict, dict], got: tuple[dict, dict]) -> list[str]:
    """Every difference between two digests, one line each; empty when they agree.

    Exact fields must be equal; each float array must have the same shape, NaNs in the same places, and
    ``|got - expected| <= tolerance`` (tolerances from the *expected* arrays)."""
    (exact_e, floats_e), (exact_g, floats_g) = expected, got
    problems = [f"{key}: expected {exact_e.get(key)!r}, got {exact_g.get(key)!r}"
                for key in sorted(set(exact_e) | set(exact_g)) if exact_e.get(key) != exact_g.get(key)]
    tolerances = float_tolerances(floats_e)
    for name in sorted(set(floats_e) | set(floats_g)):
        if name not in floats_e or name not in floats_g:
            problems.append(f"{name}: present in only one digest")
            continue
        want, have = floats_e[name], floats_g[name]
        if want.shape != have.shape:
            problems.append(f"{name}: shape {want.shape} expected, got {have.shape}")
            continue
        if not np.array_equal(np.isnan(want), np.isnan(have)):
            problems.append(f"{name}: NaNs in other places")
            continue
        finite = ~np.isnan(want)
        if not np.allclose(have[finite], want[finite], rtol=0.0, atol=tolerances[name]):
            worst = float(np.max(np.abs(have[finite] - want[finite])))
            problems.append(f"{name}: differs by up to {worst:.3g} (tolerance {tolerances[name]:.3g})")
    return problems


def save(path_stem: Path, digest_pair: tuple[dict, dict]) -> None:
    exact, floats = digest_pair
    Path(f"{path_stem}.json").write_text(json.dumps(exact, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    np.savez(f"{path_stem}.npz", **floats)


def load(path_stem: Path) -> tuple[dict, dict[str, np.ndarray]]:
    exact = json.loads(Path(f"{path_stem}.json").read_text(encoding="utf-8"))
    with np.load(f"{path_stem}.npz", allow_pickle=False) as npz:
        floats = {name: np.asarray(npz[name]) for name in npz.files}
    return exact, floats
