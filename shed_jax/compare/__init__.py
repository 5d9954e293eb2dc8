"""``shed compare``: does a selection help? Fine-tune a model on the curated, a random and the full data (many
LoRA adapters on one base model, one batched job), score each on held-out tests, with 95% intervals.

::

    sets.py      training sets from a run directory (full / random / shed / qwcs / qocs) or from files
    overlap.py   test items whose prompt is also a training prompt (reported; dropped by default)
    evals.py     test sets: multiple choice (letter and full-choice accuracy) or instruction (held-out loss)
    train.py     every (set x seed) slot on one SlotTrainer, scored by StackScorers
    stats.py     bootstrap intervals over items and seeds; paired differences
    runner.py    compare(): the whole comparison, the --json payload
    artifact.py  Comparison: RUN_DIR/compare.json
"""
from shed_jax.compare.artifact import Comparison
from shed_jax.compare.evals import EvalSet, read_eval
from shed_jax.compare.runner import UNTUNED, CompareConfig, compare, compute_matched_steps, load_model
from shed_jax.compare.sets import METHODS, TrainingSet, sets_from_files, sets_from_run

__all__ = ["METHODS", "UNTUNED", "CompareConfig", "Comparison", "EvalSet", "TrainingSet", "compare",
           "compute_matched_steps", "load_model", "read_eval", "sets_from_files", "sets_from_run"]
