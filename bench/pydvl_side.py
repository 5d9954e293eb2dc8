"""pyDVL's side of ``bench/bench_pydvl.py``; runs in its own environment (``bench/setup_pydvl.sh``).

Usage: ``.venv-pydvl/bin/python bench/pydvl_side.py IN.json OUT.json``

Imports numpy, joblib and pyDVL only (never shed_jax or JAX). ``IN.json`` holds the data (``x_train``,
``y_train``, ``x_val``, ``y_val`` as nested lists), the utility's settings (``steps``, ``learning_rate``,
``l2``) and the runs: ``[{"n_jobs": J, "permutations": P, "seed": S, "max_seconds": T, "antithetic": bool,
"truncation_rtol": r or null}, ...]``. For every run, pyDVL's permutation Monte Carlo Shapley
(``ShapleyValuation`` with a ``PermutationSampler``, or its ``AntitheticPermutationSampler``, optionally with its
``RelativeTruncation(rtol=r)``, i.e. TMC's performance tolerance; stopped by ``MaxSamples`` or ``MaxTime``)
values the training points under ``ModelUtility`` of :class:`GDLogisticRegression` scored by
validation accuracy, inside ``joblib.parallel_config(n_jobs=J)``. A stopping criterion that never stops
records, after every permutation, the wall time since ``fit`` started and the current values.
``OUT.json`` (written via a temporary file and a rename) holds every run's trajectory and the versions.

The model is the bench's logistic regression written in numpy, float32, with the same update as the JAX
utility on the shed_jax side (``bench.bench_pydvl.ArrayLogisticUtility``): ``steps`` full-batch gradient steps
from zero on the coalition's points, gradient averaged over them, L2 ``l2``; predicts ``x @ w + b > 0``. The
empty coalition scores 0 on both sides (pyDVL's ``ModelUtility`` returns the scorer's default for it).
JSON only: no pickle is read or written here.
"""
from __future__ import annotations

import json
import os
import sys
import time
from importlib import metadata

import numpy as np


class GDLogisticRegression:
    """L2 logistic regression by ``steps`` full-batch gradient steps from zero (numpy, float32)."""

    def __init__(self, steps: int = 100, learning_rate: float = 0.5, l2: float = 1e-3):
        self.steps, self.learning_rate, self.l2 = steps, learning_rate, l2
        self.w = None
        self.b = np.float32(0)

    def get_params(self, deep: bool = True) -> dict:  # scikit-learn's clone protocol
        return {"steps": self.steps, "learning_rate": self.learning_rate, "l2": self.l2}

    def set_params(self, **params):
        for key, value in params.items():
            setattr(self, key, value)
        return self

    fits = 0  # fits made in this process (all of them with n_jobs=1, where joblib runs in-process)

    def fit(self, x, y):
        GDLogisticRegression.fits += 1
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        lr, l2 = np.float32(self.learning_rate), np.float32(self.l2)
        scale = np.float32(1.0 / max(len(y), 1))
        w = np.zeros(x.shape[1], np.float32)
        b = np.float32(0)
        for _ in range(self.steps):
            p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
            g = (p - y) * scale
            w = w - lr * (x.T @ g + l2 * w)
            b = b - lr * g.sum()
        self.w, self.b = w, np.float32(b)
        return self

    def predict(self, x):
        return (np.asarray(x, np.float32) @ self.w + self.b > 0).astype(np.float32)

    def score(self, x, y):
        return float(np.mean(self.predict(x) == (np.asarray(y) > 0.5)))


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x) == (np.asarray(y) > 0.5)))


def _run(spec: dict, settings: dict, train, test) -> dict:
    from joblib import parallel_config
    from pydvl.valuation import (AntitheticPermutationSampler, MaxSamples, MaxTime, ModelUtility,
                                 PermutationSampler, RelativeTruncation, ShapleyValuation, SupervisedScorer)
    from pydvl.valuation.stopping import Status, StoppingCriterion

    n = len(train.indices)
    start = [0.0]
    trajectory: list[dict] = []

    class Recorder(StoppingCriterion):
        """Never stops; records (seconds since fit started, permutations, values) at every check."""

        def __init__(self, sampler):
            super().__init__(modify_result=False)
            self.sampler = sampler

        def _check(self, result) -> Status:
            order = np.argsort(result.indices)
            # permutations processed: each one updates every index once (the sampler's own count runs
            # ahead of the workers: it counts permutations generated, not yet evaluated)
            trajectory.append({"seconds": time.perf_counter() - start[0],
                               "permutations": int(np.max(result.counts)),
                               "values": np.asarray(result.values, np.float64)[order].tolist()})
            return Status.Pending

        def completion(self) -> float:
            return 0.0

    model = GDLogisticRegression(settings["steps"], settings["learning_rate"], settings["l2"])
    scorer = SupervisedScorer(accuracy, test_data=test, default=0.0, range=(0.0, 1.0))
    utility = ModelUtility(model, scorer, catch_errors=False, show_warnings=False, clone_before_fit=False)
    rtol = spec.get("truncation_rtol")
    truncation = RelativeTruncation(rtol=rtol) if rtol else None  # pyDVL's TMC ("performance tolerance")
    kind = AntitheticPermutationSampler if spec.get("antithetic") else PermutationSampler
    sampler = kind(truncation=truncation, seed=spec["seed"])
    recorder = Recorder(sampler)
    stop = MaxSamples(sampler, spec["permutations"]) | MaxTime(spec.get("max_seconds")) | recorder
    valuation = ShapleyValuation(utility, sampler, is_done=stop, progress=False)
    with parallel_config(n_jobs=spec["n_jobs"]):
        GDLogisticRegression.fits = 0
        start[0] = time.perf_counter()
        valuation.fit(train)
        seconds = time.perf_counter() - start[0]
    result = valuation.result
    order = np.argsort(result.indices)
    permutations = int(np.max(result.counts))
    return {**spec, "seconds": seconds, "permutations_done": permutations,
            # every permutation fits the model on each of its n non-empty prefixes (the empty one is free)
            "evaluations": permutations * n, "evaluations_per_s": permutations * n / seconds,
            # with truncation fewer fits are made; counted where they run in this process (n_jobs=1)
            "fits_counted": GDLogisticRegression.fits if spec["n_jobs"] == 1 else None,
            "values": np.asarray(result.values, np.float64)[order].tolist(), "trajectory": trajectory}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: pydvl_side.py IN.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        spec = json.load(handle)
    from pydvl.valuation import Dataset

    train = Dataset(np.asarray(spec["x_train"], np.float32), np.asarray(spec["y_train"], np.float32))
    test = Dataset(np.asarray(spec["x_val"], np.float32), np.asarray(spec["y_val"], np.float32))
    runs = [_run(run, spec["settings"], train, test) for run in spec["runs"]]
    out = {"runs": runs, "cpu_count": os.cpu_count(),
           "versions": {name: _version(name) for name in ("pyDVL", "numpy", "joblib", "scikit-learn")},
           "python": sys.version.split()[0]}
    tmp = argv[1] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(out, handle)
    os.replace(tmp, argv[1])
    return 0


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
