"""The training sets of a comparison: from a run directory (``full``, ``random``, ``shed``, ``qwcs``, ``qocs``) or
from files (``--train A.jsonl``).

From a run directory every set is read through the run's own data reader (``config.json``: the data path,
format, field map, split), so any input format ``shed refine`` reads works here:

* ``full``: every candidate record (exact duplicates dropped when the run dropped them);
* ``random``: the run's budget drawn uniformly from the candidates with ``seed`` (:func:`shed_jax.select.random`);
* ``shed``: the run's selection (``selection.json``);
* ``qwcs`` / ``qocs``: the run's cluster values re-sampled with that sampler at the same budget and seed.

Example:
    >>> s = TrainingSet("mine", ["q1", "q2"], ["a1", "a2"], source="mine.jsonl")
    >>> s.n_records, s.summary()["source"]
    (2, 'mine.jsonl')
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from shed_jax.errors import DataError, PipelineError, UserError

__all__ = ["METHODS", "RUN_METHODS_DEFAULT", "TrainingSet", "sets_from_run", "sets_from_files", "parse_train_spec"]

METHODS = ("full", "random", "shed", "qwcs", "qocs")
RUN_METHODS_DEFAULT = ("full", "random", "shed")


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """One training set: ``prompts`` and ``responses`` (N each) and where they came from.

    Attributes:
        name: the row's name (``full``, ``random``, ``shed``, ... or the file's stem).
        indices: the records' indices in the run's data (run directory sets), else None.
    """

    name: str
    prompts: list[str]
    responses: list[str]
    source: str = ""
    indices: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_records(self) -> int:
        return len(self.prompts)

    def summary(self) -> dict:
        return {"name": self.name, "records": self.n_records, "source": self.source}


def _take(dataset, indices, name: str, source: str) -> TrainingSet:
    indices = np.asarray(indices, np.int64)
    return TrainingSet(name, [dataset.prompts[i] for i in indices], [dataset.responses[i] for i in indices],
                       source, indices)


def sets_from_run(run_dir, methods: Sequence[str] = RUN_METHODS_DEFAULT, *, seed: int | None = None
                  ) -> tuple[list[TrainingSet], dict]:
    """The training sets ``methods`` of a finished run directory, and a description of the run.

    Args:
        run_dir: a ``shed refine`` / ``shed select`` run directory with ``config.json`` and ``selection.json``.
        methods: names from :data:`METHODS`, in the order the rows are wanted.
        seed: seeds ``random``, ``qwcs`` and ``qocs`` (default: the run's seed).

    Raises:
        UserError: an unknown method, a directory that is not a run, no selection, an empty selection, data
            that changed since the run.
    """
    from shed_jax import select as _select
    from shed_jax.data import records_sha256
    from shed_jax.run.artifacts import Clusters, Selection, Values
    from shed_jax.run.inputs import RunInputs
    from shed_jax.run.rundir import RunDir
    from shed_jax.run.select import select_indices

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}, allowed {', '.join(METHODS)}", field="--methods")
    if not methods:
        raise UserError("no methods given", field="--methods")
    if len(set(methods)) != len(methods):
        raise UserError(f"a method is listed twice: {', '.join(methods)}", field="--methods")
    run = RunDir(run_dir)
    run.require("shed compare")
    config = run.load_config()
    try:
        selection = Selection.load(run.path)
    except FileNotFoundError:
        raise PipelineError("no selection.json in this run directory: run `shed select` or `shed refine` first",
                            path=run.path) from None
    if selection.indices.size == 0:
        raise DataError("the selection is empty", path=run.path / Selection.FILENAME, field="indices")
    inputs = RunInputs(config)
    dataset = inputs.dataset
    expected = run.resolved().get("data_sha256")
    if expected and records_sha256(dataset.records) != expected:
        raise DataError("the data changed since this run (its records' sha256 differs from config.json)",
                        path=config.data)
    n = len(dataset)
    if selection.indices.min() < 0 or selection.indices.max() >= n:
        raise DataError(f"selection indices outside the data's {n} records", path=run.path / Selection.FILENAME,
                        field="indices")
    seed = config.seed if seed is None else int(seed)
    mask = inputs.candidate_mask
    budget = int(selection.indices.size)
    data_name = os.fspath(config.data)
    sets = []
    for method in methods:
        if method == "full":
            sets.append(_take(dataset, np.flatnonzero(mask), "full", f"{data_name} (all {int(mask.sum())} candidates)"))
        elif method == "random":
            indices = _select.random(n, budget, seed=seed, candidates=mask)
            sets.append(_take(dataset, indices, "random", f"uniform, {budget} records, seed {seed}"))
        elif method == "shed":
            sets.append(_take(dataset, selection.indices, "shed",
                              f"{Selection.FILENAME} ({selection.sampler}, {budget} records)"))
        else:
            try:
                clusters, values = Clusters.load(run.path), Values.load(run.path)
            except FileNotFoundError as exc:
                raise PipelineError(f"method {method!r} needs the run's cluster values ({exc.filename} missing)",
                                    path=run.path, field="--methods") from None
            indices = select_indices(clusters.labels, values.cluster_values, budget, sampler=method,
                                     beta=config.beta, seed=seed)
            sets.append(_take(dataset, indices, method, f"{method} on the run's values, {budget} records, seed {seed}"))
    info = {"run_dir": str(run.path), "data": data_name, "n_records": n, "n_candidates": int(mask.sum()),
            "budget": budget, "sampler": selection.sampler, "seed": seed}
    return sets, info


def parse_train_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` or ``PATH`` -> (name or None, path). A path that exists as given is never split."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if name and all(c.isalnum() or c in "-_." for c in name):
            return name, path
    return None, spec


def sets_from_files(specs: Sequence[str], *, format: str = "auto") -> list[TrainingSet]:
    """Training sets from files (``[NAME=]PATH``, any source :func:`shed_jax.data.read_instructions` reads).

    The row name is ``NAME`` or the file's stem (``random.jsonl`` -> ``random``, so such a row is the baseline
    of the paired differences). Every record is used (duplicates kept).

    Raises:
        UserError: no files, two rows with the same name, an unreadable or empty file.
    """
    from shed_jax.data import read_instructions

    if not specs:
        raise UserError("give at least one training set", field="--train")
    sets, names = [], set()
    for spec in specs:
        name, path = parse_train_spec(spec)
        if name is None:
            base = Path(path).name
            for suffix in (".gz", ".jsonl", ".json", ".parquet", ".csv", ".tsv"):
                if base.endswith(suffix):
                    base = base[: -len(suffix)]
            name = base or path
        if name in names:
            raise UserError(f"two training sets are named {name!r}; name them with NAME=PATH", field="--train")
        names.add(name)
        data = read_instructions(path, format=format, duplicates="keep")
        if len(data) == 0:
            raise DataError("the training set is empty", path=path)
        sets.append(TrainingSet(name, list(data.prompts), list(data.responses), path))
    return sets
