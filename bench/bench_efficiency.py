"""Row 5 of issue 20: the estimator's error against exact Shapley values vs the utility evaluations it spent.

Two games with exact values:

* ``airport``: the airport cost game of ``n = 100`` players (costs uniform in [0, 1), seed 0), exact values
  by Littlechild-Owen's closed form (``shapley.games.AirportGame``).
* ``logreg``: a real utility, the validation accuracy of an L2 logistic regression trained on a coalition of
  ``n = 12`` points (``bench.shapley_bench.LogisticRegressionUtility``, 100 gradient steps), exact values by
  enumerating its 4,096 coalitions (``shapley.exact``).

Settings of ``shapley.monte_carlo``: removal step ``m`` = 1, 5, 20 (SHED's blocks: ``ceil(n / m) - 1``
evaluations per permutation, biased for ``m > 1``; ``m`` > ``n / 2`` is skipped), antithetic pairs (``m = 1``)
and truncation (TMC, ``truncation_tol = 0.05``, ``m = 1``). For each setting and each permutation budget of
a doubling grid, ``seeds`` runs with different seeds; the error is the RMSE over players of the estimate
against the exact values, averaged (root mean square) over the seeds, and the cost the mean
``n_evaluations`` the engine reports. The table reports the RMSE at the largest budget; the plot
(``plots/efficiency.png``) draws RMSE against evaluations, log-log, one line per setting.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.runner import Result, save_figure

BATCH = 128

SETTINGS = (  # name, removal step, antithetic, truncation tolerance
    ("m1", 1, False, None),
    ("m5", 5, False, None),
    ("m20", 20, False, None),
    ("m1_antithetic", 1, True, None),
    ("m1_truncation", 1, False, 0.05),
)


def _games(quick: bool):
    from bench.shapley_bench import LogisticRegressionUtility
    from shed_jax import shapley

    rng = np.random.default_rng(0)
    airport = shapley.games.AirportGame(rng.random(20 if quick else 100))
    games = [("airport", airport, airport.n_players, airport.shapley_values())]
    if not quick:  # --quick: the closed-form game only (seconds)
        logreg = LogisticRegressionUtility(n_train=12, n_val=200, steps=100, seed=1)
        games.append(("logreg", logreg, logreg.n_players, shapley.exact(logreg, logreg.n_players)))
    return games


def _curves(quick: bool):
    from shed_jax import shapley

    budgets = (2, 4) if quick else (2, 4, 8, 16, 32, 64, 128)
    seeds = 1 if quick else 4
    settings = SETTINGS[:2] if quick else SETTINGS
    curves = {}
    for game_name, utility, n, exact in _games(quick):
        exact = np.asarray(exact, np.float64)
        for name, step, antithetic, tol in settings:
            if step > max(1, n // 2):
                continue
            points = []
            for budget in budgets:
                errors, evaluations = [], []
                for seed in range(seeds):
                    # a fixed small batch: the error does not depend on it, and the default chunk of a cheap
                    # game of few players would hold thousands of permutations, most of them unused here
                    res = shapley.monte_carlo(utility, n, n_permutations=budget, removal_step=step, seed=seed,
                                              antithetic=antithetic, truncation_tol=tol, batch_size=BATCH)
                    errors.append(float(np.sqrt(np.mean((np.asarray(res.values, np.float64) - exact) ** 2))))
                    evaluations.append(res.n_evaluations)
                points.append({"permutations": budget, "evaluations": float(np.mean(evaluations)),
                               "rmse": float(np.sqrt(np.mean(np.square(errors))))})
            curves[f"{game_name}_{name}"] = points
    return curves, {"budgets": list(budgets), "seeds": seeds, "batch_size": BATCH}


def run(quick: bool, repeats: int) -> Result:
    # The curves are deterministic (fixed seeds): one computation, repeated `repeats` times would only
    # repeat it; the runner's repeats therefore all carry the same numbers.
    curves, grid = _curves(quick)
    row = {f"{name}_rmse_at_max": points[-1]["rmse"] for name, points in curves.items()}
    row.update({f"{name}_evals_at_max": points[-1]["evaluations"] for name, points in curves.items()})
    config = {"settings": [{"name": s[0], "removal_step": s[1], "antithetic": s[2], "truncation_tol": s[3]}
                           for s in SETTINGS], **grid,
              "games": {"airport": "AirportGame n=100 (closed form)",
                        "logreg": "logistic regression n=12, 100 steps (exact enumeration)"}}
    return Result(config=config, repeats=[dict(row)], info={"curves": curves, "notes": [
        "RMSE over players against the exact values, root mean square over the seeds; evaluations: the "
        "engine's n_evaluations, mean over the seeds; m > 1 is SHED's block estimator (biased: its error "
        "levels off)"]})


def plot(entry: dict, path) -> bool:
    """RMSE against evaluations, log-log, one panel per game, one line per setting."""
    curves = entry.get("info", {}).get("curves")
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = sorted({name.split("_", 1)[0] for name in curves})
    fig, axes = plt.subplots(1, len(games), figsize=(5.2 * len(games), 3.8), squeeze=False)
    for ax, game in zip(axes[0], games):
        for name, points in curves.items():
            if name.split("_", 1)[0] != game:
                continue
            ax.loglog([p["evaluations"] for p in points], [p["rmse"] for p in points], marker="o",
                      markersize=3, label=name.split("_", 1)[1])
        ax.set_xlabel("utility evaluations")
        ax.set_ylabel("RMSE vs exact values")
        ax.set_title(game, fontsize=9)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, Path(path))
    return True
