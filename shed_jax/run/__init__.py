"""Runs: one module per stage, a run directory with typed artifacts, and their composition.

::

    rundir.py     paths, schema version, lock, stage log, config.json, error log
    inputs.py     data + validation read once, checks before any work, stage fingerprints
    artifacts.py  Clusters, Examples, Values, Convergence, Selection, GroundTruth: save(run_dir) / load(run_dir)
    stage.py      Run (one command in one run directory), Stage, the one skeleton run_stage, StageResult
    embed.py  cluster.py  value.py  select.py      the stages: each a Stage (load, prepare, compute, files)
    refine.py     PIPELINE (the four stages), run_embed / run_cluster / run_value / run_select / refine

Data flows one way: data -> embed -> cluster -> (proxy x Shapley) value -> select -> write.
"""
from shed_jax.config import RefineConfig, default_n_clusters, default_removal_step
from shed_jax.run.artifacts import Clusters, Convergence, Examples, GroundTruth, MemberValues, Selection, Values
from shed_jax.run.inputs import STAGES, RunInputs, stage_fingerprints
from shed_jax.run.refine import RefineResult, refine, run_cluster, run_embed, run_select, run_value, write_report
from shed_jax.run.rundir import SCHEMA_VERSION, RunDir, default_run_dir
from shed_jax.run.select import score_rows, select_indices
from shed_jax.run.stage import Run, StageResult
from shed_jax.run.value import cluster_means

__all__ = ["Clusters", "Convergence", "Examples", "GroundTruth", "MemberValues", "RefineConfig", "RefineResult",
           "Run", "RunDir", "RunInputs", "SCHEMA_VERSION", "STAGES", "Selection", "StageResult", "Values",
           "cluster_means", "default_n_clusters", "default_removal_step", "default_run_dir", "refine",
           "run_cluster", "run_embed", "run_select", "run_value", "score_rows", "select_indices",
           "stage_fingerprints", "write_report"]
