"""The SHED pipeline's library entry points (kept for code written against shed_jax 0.1).

The pipeline lives in :mod:`shed_jax.run` (one module per stage, typed run-directory artifacts) and
:mod:`shed_jax.config` (every option declared once); the demo in :mod:`shed_jax.demo`. This module re-exports
their public names under the old ones.
"""
from shed_jax.config import (
    DEFAULT_MODEL,
    DUPLICATE_POLICIES,
    SAMPLERS,
    RefineConfig,
    default_n_clusters,
    default_removal_step,
)
from shed_jax.demo import DEMO_SIZES, DemoResult, demo
from shed_jax.errors import PipelineError
from shed_jax.run import (
    STAGES,
    RefineResult,
    RunDir,
    StageResult,
    cluster_means,
    default_run_dir,
    refine,
    run_cluster,
    run_embed,
    run_select,
    run_value,
    score_rows,
    select_indices,
    stage_fingerprints,
    write_report,
)

EmbedResult = ClusterResult = ValueResult = SelectResult = StageResult


def load_config(run_dir) -> RefineConfig:
    """The :class:`RefineConfig` stored in ``RUN_DIR/config.json``."""
    return RunDir(run_dir).load_config()


__all__ = ["DEFAULT_MODEL", "DEMO_SIZES", "DUPLICATE_POLICIES", "ClusterResult", "DemoResult", "EmbedResult",
           "PipelineError", "RefineConfig", "RefineResult", "SAMPLERS", "STAGES", "SelectResult", "StageResult",
           "ValueResult", "cluster_means", "default_n_clusters", "default_removal_step", "default_run_dir", "demo",
           "load_config", "refine", "run_cluster", "run_embed", "run_select", "run_value", "score_rows",
           "select_indices", "stage_fingerprints", "write_report"]
