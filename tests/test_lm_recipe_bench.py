"""bench/lm_recipe_bench.py's bookkeeping (no model): post-hoc max_validation and the per-item noise for metric=loss."""
import types

import numpy as np

from bench.lm_recipe_bench import compare, summarise
from shed_jax.lm.scoring import letter_metric, loss_metric
from shed_jax.proxies._lm_validation import _subset


def test_loss_metric_subsets_and_per_item_terms_by_hand():
    rng = np.random.default_rng(0)
    n_items = 12
    tokens = rng.integers(3, 30, n_items)
    rows = [-rng.uniform(1, 3, n_items) * tokens for _ in range(3)]   # U(full) and 2 coalitions: summed log-probs
    empty = -rng.uniform(2, 4, n_items) * tokens
    val = types.SimpleNamespace(metric="loss", n_items=n_items, table=types.SimpleNamespace(n_target_tokens=tokens))
    record = {"items": {}}
    summarise(record, rows, empty, val, [5, 12], letter_metric, _subset, seed=3)
    keep = _subset(n_items, 5, 3)
    entry = record["items"]["5"]
    assert entry["U_full"] == np.float64(rows[0][keep].sum() / tokens[keep].sum())
    np.testing.assert_allclose(entry["values"], [r[keep].sum() / tokens[keep].sum() for r in rows[1:]], rtol=1e-12)
    np.testing.assert_allclose(entry["U_empty"], empty[keep].sum() / tokens[keep].sum(), rtol=1e-12)
    assert "12" not in record["items"]   # all items: the utility itself
    # each item's term of the token mean: their mean is the metric (the utility's own loss_metric)
    np.testing.assert_allclose(np.mean(record["items_full"]), loss_metric(np.stack(rows)[:1], tokens)[0], rtol=1e-12)
    np.testing.assert_allclose(np.mean(record["items_empty"]), loss_metric(empty[None], tokens)[0], rtol=1e-12)


def test_compare_reports_the_movement_against_its_paired_item_noise():
    record = {"U_full": -2.0, "U_empty": -2.5, "values": [-2.1, -2.3, -2.2], "n_items": 4, "items": {},
              "items_full": [-1.0, -2.0, -3.0, -2.0], "items_empty": [-1.5, -2.5, -3.4, -2.6],
              "rounds": [{"fine_tunes": 4, "seconds": 10.0, "training_s": 6.0, "scoring_s": 4.0}],
              "U_full_other_seeds": {"1": -2.01, "2": -1.99}}
    out = compare({"recipes": {"cheap": record}}, "default")["cheap"]
    diff = np.array([0.5, 0.5, 0.4, 0.6])
    assert out["full_minus_empty"] == 0.5
    np.testing.assert_allclose(out["full_minus_empty_2se_items"], 2 * diff.std(ddof=1) / 2, rtol=1e-12)
    np.testing.assert_allclose(out["U_full_seed_std"], 0.01, rtol=1e-9)
    assert out["seconds_per_fine_tune"] == 2.5
