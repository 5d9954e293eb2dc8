"""``shed demo``: refine a generated data set with known junk and measure how much junk each selection keeps.

:mod:`shed_jax.demo.synthetic` generates the data (instruction topics, some of them junk: responses that do
not answer their instruction); :func:`demo` runs :func:`shed_jax.run.refine` on it with QOCS and, from the
same cluster values and budget, QWCS and a uniformly random selection.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shed_jax.config import DEFAULT_MODEL, DEMO_SIZES, DemoConfig
from shed_jax.io import atomic_write_json
from shed_jax.run.artifacts import GroundTruth
from shed_jax.run.refine import RefineResult, refine
from shed_jax.run.rundir import RunDir, default_run_dir
from shed_jax.run.select import select_indices
from shed_jax.run.stage import Log

__all__ = ["DEMO_SIZES", "DemoResult", "demo"]


@dataclass(frozen=True)
class DemoResult:
    """Outcome of :func:`demo`: junk rates (fraction of known-junk records) per selection."""

    run_dir: Path
    train: Path
    valid: Path
    budget: int
    junk_rate_input: float
    junk_rate: dict  # sampler name -> junk rate of its selection at the same budget
    refine: RefineResult

    def summary(self) -> dict:
        return {"run_dir": str(self.run_dir), "train": str(self.train), "valid": str(self.valid),
                "budget": self.budget, "junk_rate_input": self.junk_rate_input,
                "junk_rate_selected": dict(self.junk_rate)}


def demo(run_dir: str | os.PathLike | None = None, *, size: str = "small", seed: int = 0, ratio: float = 0.2,
         n_permutations: int | None = None, progress: bool = True, log: Log | None = None,
         model: str = DEFAULT_MODEL, proxies_per_cluster: int | str = "auto") -> DemoResult:
    """Refine a generated data set with known junk (:func:`shed_jax.demo.synthetic.make_demo`) and measure it.

    Writes the data under ``RUN_DIR/demo_data/`` (20% of the records, in whole topics, are junk), saves the
    ground truth as a run artifact (the report shows junk per cluster), runs :func:`shed_jax.run.refine` with
    QOCS at ``ratio``, then, from the same cluster values and budget, QWCS and a uniformly random selection.
    ``size``: "small" (600 records, 16 topics, K=16) or "default" (3000 records, 32 topics, K=48).
    ``proxies_per_cluster``: as ``shed refine --proxies-per-cluster`` (``"auto"`` or an integer). Every option is
    checked first (:class:`shed_jax.config.DemoConfig`, the same checks as ``shed refine``'s): a bad one raises
    :class:`shed_jax.errors.PipelineError` naming it and nothing is written.

    Returns:
      :class:`DemoResult` with ``junk_rate_input`` and ``junk_rate[sampler]`` for qocs, qwcs and random; the
      same numbers are written to ``RUN_DIR/demo.json``.
    """
    from shed_jax.demo import synthetic

    options = DemoConfig(run_dir=None if run_dir is None else os.fspath(run_dir), size=size, ratio=ratio,
                         n_permutations=n_permutations, proxies_per_cluster=proxies_per_cluster, model=model,
                         seed=seed)  # every option checked (as `shed refine` checks it) before anything is written
    spec = DEMO_SIZES[options.size]
    directory = RunDir(Path(run_dir) if run_dir is not None else default_run_dir(f"demo-{size}"))
    directory.create()
    data_dir = directory.path / "demo_data"
    data_dir.mkdir(exist_ok=True)
    paths = synthetic.make_demo(data_dir, n_examples=spec["n_examples"], n_topics=spec["n_topics"],
                                n_validation=spec["n_validation"], seed=seed)
    junk = np.zeros(spec["n_examples"], dtype=bool)
    junk[np.asarray(paths.junk_indices, dtype=np.int64)] = True
    GroundTruth(junk, source=f"shed_jax.demo.synthetic seed={seed} size={size}").save(directory)
    config = options.refine_config(data=str(paths.train), valid=str(paths.valid),
                                   output=str(directory.path / "selected.jsonl"), run_dir=str(directory.path))
    result = refine(config, progress=progress, log=log, resume=True)  # a rerun continues an interrupted valuation
    if junk.shape[0] != result.labels.shape[0]:
        raise RuntimeError(f"demo data has {result.labels.shape[0]} records, expected {junk.shape[0]}")
    candidates = result.labels >= 0
    budget = int(result.indices.shape[0])
    rates = {"qocs": float(junk[result.indices].mean())}
    for sampler in ("qwcs", "random"):
        picks = select_indices(result.labels, result.cluster_values, budget, sampler=sampler, seed=seed)
        rates[sampler] = float(junk[picks].mean())
    out = DemoResult(directory.path, Path(paths.train), Path(paths.valid), budget, float(junk[candidates].mean()),
                     rates, result)
    atomic_write_json(directory.path / "demo.json", out.summary())
    return out
