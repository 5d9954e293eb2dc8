"""Which LM-proxy recipe is cheap enough for a CPU and still ranks coalitions like the default one?

Issue #21 asks for a CPU-sized default recipe of the LM proxy decided by measurement. This bench takes the
players a real run values (the proxies of ``shed cluster``'s clusters: ``RUN_DIR/clusters.npz``), a fixed
seeded set of random coalitions of them, and evaluates the LM proxy's utility on that set under several
recipes, in one process (model loaded once, every recipe under the same load):

* the values ``U(S)`` of every coalition, ``U(full)`` and ``U(empty)`` (the untuned model);
* the Spearman rank correlation of each recipe's values against the default recipe's and against the most
  expensive recipe measured (``--reference``), over the coalitions both have and the full one (``U(empty)`` is
  the untuned model under every recipe, so it is left out); a recipe ``seed=1`` copy of another gives the
  ceiling that seed noise alone allows;
* whether the utility moves: ``U(full) - U(empty)`` against the seed noise of ``U(full)`` (the full coalition
  fine-tuned under ``--noise-seeds`` other seeds), the validation noise (2 standard errors of the paired per-item
  difference of the full and the untuned model) and the spread of the coalition values;
* seconds per fine-tune (training and scoring apart; the first round, which compiles, is excluded from the
  steady-state figure and reported apart) and the load average before and after.

``max_validation`` candidates cost nothing extra: the per-item scores of every round are kept, and the metric
of the utility's own seeded subset (``proxies._lm_validation._subset``) is computed from them; their seconds are the
measured training seconds plus the scoring seconds scaled by the fraction of items kept.

Recipes are given as ``NAME:OPT=V,OPT=V`` (``--proxy-option`` names; ``seed=S`` builds the utility with another
seed). JSON is written after every round to ``--out`` (default ``bench/results/lm_recipe_bench.json``), so a
run cut short keeps what it measured. Example (the issue-21 example's players; ``../shared/data``):

    head -200 ../shared/data/instruct/dolly15k.jsonl > /tmp/dolly200.jsonl
    sed -n 1001,1040p ../shared/data/instruct/dolly15k.jsonl > /tmp/val40.jsonl   # held out: metric=loss
    # (50 MMLU-val questions do not move the utility of SmolLM2-135M, which is at chance there: README)
    shed cluster /tmp/dolly200.jsonl --clusters 8 --run-dir /tmp/run8
    PYTHONPATH=. .venv/bin/python bench/lm_recipe_bench.py --data /tmp/dolly200.jsonl --valid /tmp/val40.jsonl \\
        --run-dir /tmp/run8 --coalitions 8 \\
        --recipe cpu:steps=5,max_length=128 --recipe default: --reference default
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key.strip()] = value.strip()
    return name, options


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="the run's data file")
    parser.add_argument("--valid", help="validation file: multiple choice (MMLU-style) or instruction data "
                                        "(held out from the players; the utility's metric is then loss)")
    parser.add_argument("--run-dir", help="a run directory with clusters.npz (shed cluster)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="instead of measuring: combine the recipes of earlier outputs (same players and "
                             "coalitions, e.g. two processes run side by side) and compare them; writes --out")
    parser.add_argument("--coalitions", type=int, default=16, help="random coalitions (besides full and empty)")
    parser.add_argument("--coalition-seed", type=int, default=0)
    parser.add_argument("--recipe", action="append", default=[],
                        help="NAME:OPT=V,... (repeatable; run in this order); default: steps3, steps5, default")
    parser.add_argument("--reference", default="default", help="the recipe others are compared with")
    parser.add_argument("--noise-seeds", default="1,2", help="other seeds for U(full) (empty: none)")
    parser.add_argument("--noise-recipes", default="", help="recipes that get the seed-noise runs (default: all)")
    parser.add_argument("--max-validation", default="25", help="post-hoc max_validation candidates (comma list)")
    parser.add_argument("--limit-coalitions", default="",
                        help="NAME=K,...: evaluate only the first K coalitions for that recipe (an expensive one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lm_recipe_bench.json"))
    return parser.parse_args(argv)


def spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def draw_coalitions(n_players: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct coalitions, neither empty nor full: a uniform size 1..n-1, then a uniform subset
    (the prefixes of random permutations that Monte Carlo Shapley evaluates have uniform sizes too)."""
    rng = np.random.default_rng(seed)
    seen, rows = set(), []
    while len(rows) < count:
        size = int(rng.integers(1, n_players))
        row = np.zeros(n_players, bool)
        row[rng.choice(n_players, size, replace=False)] = True
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return np.stack(rows)


class Recorder:
    """Wraps ``utility.scorer`` to keep each round's per-item rows (for post-hoc ``max_validation``)."""

    def __init__(self, utility):
        self.rows = []
        self._scorer = utility.scorer
        utility.scorer = self

    def __call__(self, lora):
        out = np.asarray(self._scorer(lora))
        self.rows.append(out)
        return out

    def __getattr__(self, name):
        return getattr(self._scorer, name)


def merge(args) -> None:
    results = [json.loads(Path(p).read_text()) for p in args.merge]
    first = results[0]
    for other, path in zip(results[1:], args.merge[1:]):
        for key in ("player_index", "coalitions", "n_validation"):
            if other[key] != first[key]:
                sys.exit(f"{path}: {key} differs from {args.merge[0]}'s")
    combined = {**first, "merged_from": list(args.merge), "recipes": {},
                "load_before": [r.get("load_before") for r in results],
                "load_after": [r.get("load_after", r.get("load_now")) for r in results]}
    for result in results:
        combined["recipes"].update(result["recipes"])
    combined["comparison"] = compare(combined, args.reference)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(combined, indent=2) + "\n")
    print(json.dumps(combined["comparison"], indent=2))


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    if not (args.data and args.valid and args.run_dir):
        sys.exit("--data, --valid and --run-dir are needed (or --merge)")
    import jax
    import jax.numpy as jnp

    from shed_jax._compile_cache import enable_compilation_cache
    from shed_jax.data import read_instructions, read_validation
    from shed_jax.lm import find_smollm2_gguf, load
    from shed_jax.lm.scoring import letter_metric
    from shed_jax.proxies._lm_validation import _subset
    from shed_jax.proxies.lm import LMProxyConfig, LMProxyUtility

    recipes = [parse_recipe(r) for r in (args.recipe or ["steps3:steps=3", "steps5:steps=5", "default:"])]
    names = [n for n, _ in recipes]
    limits = {k: int(v) for k, v in (item.split("=") for item in filter(None, args.limit_coalitions.split(",")))}
    noise_seeds = [int(s) for s in args.noise_seeds.split(",") if s.strip()]
    noise_recipes = set(filter(None, args.noise_recipes.split(","))) or set(names)
    max_validation = [int(s) for s in args.max_validation.split(",") if s.strip()]

    enable_compilation_cache()
    dataset = read_instructions(args.data)
    validation = read_validation(args.valid)
    clusters = np.load(Path(args.run_dir) / "clusters.npz")
    index = np.asarray(clusters["proxy_index"], np.int64)
    prompts = [dataset.prompts[int(i)] for i in index]
    responses = [dataset.responses[int(i)] for i in index]
    n = len(prompts)
    coalitions = draw_coalitions(n, args.coalitions, args.coalition_seed)
    full = np.ones((1, n), bool)
    path = find_smollm2_gguf()
    start = time.perf_counter()
    loaded = load(path, dtype=jnp.float32, param_dtype=jnp.float32)
    log(f"loaded {path} in {time.perf_counter() - start:.1f} s; {n} players, {len(coalitions)} coalitions")

    result = {"data": args.data, "valid": args.valid, "n_players": n, "player_index": index.tolist(),
              "n_validation": len(validation), "backend": jax.default_backend(),
              "cpu_count": os.cpu_count(), "coalitions": coalitions.astype(int).tolist(),
              "coalition_sizes": coalitions.sum(1).tolist(), "load_before": os.getloadavg(), "recipes": {}}
    out = Path(args.out)
    empty_item_rows = {}

    def write():
        result["load_now"] = os.getloadavg()
        result["comparison"] = compare(result, args.reference)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)

    for name, options in recipes:
        options = dict(options)
        seed = int(options.pop("seed", 0))
        config = LMProxyConfig(model=path, **coerce(options))
        utility = LMProxyUtility.from_model(loaded.model, loaded.tokenizer, prompts, responses, validation, config,
                                            seed=seed, source=path)
        recorder = Recorder(utility)
        val = utility.validation
        record = {"options": options, "seed": seed, "config": config.to_dict(), "n_slots": utility.n_slots,
                  "n_items": val.n_items, "rounds": [], "values": [], "items": {}}
        result["recipes"][name] = record
        k = min(limits.get(name, len(coalitions)), len(coalitions))
        # the first round: U(full) and U(empty) (the empty coalition rides along in a free slot), plus coalitions
        masks = np.concatenate([full, coalitions[:k]])
        first = np.concatenate([masks[: utility.n_slots - 1], np.zeros((1, n), bool)])
        batches = [first] + [masks[i:i + utility.n_slots] for i in range(utility.n_slots - 1, len(masks),
                                                                            utility.n_slots)]
        item_rows = []   # per evaluated non-empty mask, the (N, K) per-item rows
        for b, batch in enumerate(batches):
            t0 = time.perf_counter()
            train0, score0 = utility.seconds_training, utility.seconds_scoring
            n_before = len(recorder.rows)
            values = np.asarray(utility.evaluate(batch), np.float64)
            rows = [r for chunk in recorder.rows[n_before:] for r in chunk]
            nonempty = [i for i in range(len(batch)) if batch[i].any()]
            if b == 0:
                record["U_empty"] = float(values[~batch.any(1)][0])
                record["U_full"] = float(values[0])
                empty_item_rows[name] = rows[len(nonempty)] if len(rows) > len(nonempty) else None
                record["values"].extend(values[1:len(nonempty)].tolist())
            else:
                record["values"].extend(values.tolist())
            item_rows.extend(rows[:len(nonempty)])
            record["rounds"].append({"fine_tunes": len(nonempty), "seconds": time.perf_counter() - t0,
                                     "training_s": utility.seconds_training - train0,
                                     "scoring_s": utility.seconds_scoring - score0, "load": os.getloadavg()})
            log(f"{name}: round {b + 1}/{len(batches)} {len(nonempty)} fine-tunes in "
                f"{record['rounds'][-1]['seconds']:.0f} s (load {os.getloadavg()[0]:.1f})")
            summarise(record, item_rows, empty_item_rows[name], val, max_validation, letter_metric, _subset, seed)
            write()
        if name in noise_recipes and noise_seeds:
            record["U_full_other_seeds"] = {}
            for other in noise_seeds:
                t0 = time.perf_counter()
                noisy = LMProxyUtility.from_model(loaded.model, loaded.tokenizer, prompts, responses, validation,
                                                  config, seed=other, source=path)
                record["U_full_other_seeds"][str(other)] = float(np.asarray(noisy.evaluate(full))[0])
                log(f"{name}: U(full) seed {other} = {record['U_full_other_seeds'][str(other)]:.5f} "
                    f"({time.perf_counter() - t0:.0f} s)")
                write()
    result["load_after"] = os.getloadavg()
    write()
    print(json.dumps(result["comparison"], indent=2))
    log(f"wrote {out}")


def coerce(options: dict) -> dict:
    from shed_jax.proxies.lm import LMProxyConfig

    out = {}
    for key, value in options.items():
        default = getattr(LMProxyConfig(), key)
        if value.lower() == "none":
            out[key] = None
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int) or key in ("slots", "memory_budget_mb", "max_validation"):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def summarise(record, item_rows, empty, val, max_validation, letter_metric, subset, seed):
    """Post-hoc max_validation values from the kept per-item rows (mc_prob, mc_accuracy, loss)."""
    if val.metric not in ("mc_prob", "mc_accuracy", "loss") or not item_rows:
        return
    rows = np.stack(item_rows)
    n_items = rows.shape[1]
    if val.metric == "loss":   # rows: summed target log-probabilities per item; the metric is their token mean
        tokens = np.asarray(val.table.n_target_tokens, np.float64)

        def metric(part, keep):
            return np.asarray(part, np.float64).sum(axis=1) / max(float(tokens[keep].sum()), 1.0)

        def per_item(row):   # item i's term of the token mean, times n (their mean is the metric)
            return (np.asarray(row, np.float64) / max(float(tokens.sum()), 1.0) * n_items).tolist()
    else:
        def metric(part, keep):
            return letter_metric(part, val.answers[keep], val.choice_mask[keep], val.metric)

        def per_item(row):   # the metric of each item alone (mc_prob: the correct letter's probability)
            return [float(metric(np.asarray(row)[None, [i]], [i])[0]) for i in range(n_items)]

    if empty is not None and "items_full" not in record:
        record["items_full"], record["items_empty"] = per_item(rows[0]), per_item(empty)
    for limit in max_validation:
        if limit >= val.n_items:
            continue
        keep = subset(val.n_items, limit, seed)
        values = metric(rows[:, keep], keep)
        entry = {"U_full": float(values[0]), "values": [float(v) for v in values[1:]]}
        if empty is not None:
            entry["U_empty"] = float(metric(np.asarray(empty)[None, keep], keep)[0])
        record["items"][str(limit)] = entry


def compare(result, reference_name) -> dict:
    """Spearman against the reference and the default, the utility's movement, seconds per fine-tune."""
    recipes = result["recipes"]
    out = {}
    variants = {}
    for name, rec in recipes.items():
        variants[name] = rec
        for limit, entry in rec.get("items", {}).items():
            variants[f"{name}+max_validation={limit}"] = {**entry, "_base": name, "_fraction": int(limit) / rec["n_items"]}
    for name, rec in variants.items():
        base = recipes[rec.get("_base", name)]
        steady = [r for r in base["rounds"][1:]] or base["rounds"]
        tuned = sum(r["fine_tunes"] for r in steady)
        train = sum(r["training_s"] for r in steady) / max(tuned, 1)
        score = sum(r["scoring_s"] for r in steady) / max(tuned, 1) * rec.get("_fraction", 1.0)
        entry = {"coalitions": len(rec["values"]), "seconds_per_fine_tune": train + score,
                 "training_s_per_fine_tune": train, "scoring_s_per_fine_tune": score,
                 "first_round_s": base["rounds"][0]["seconds"] if base["rounds"] else None}
        if "U_full" in rec and "U_empty" in rec:
            entry["U_full"], entry["U_empty"] = rec["U_full"], rec["U_empty"]
            entry["full_minus_empty"] = rec["U_full"] - rec["U_empty"]
            values = np.asarray(rec["values"] + [rec["U_full"]], np.float64)
            entry["spread_of_values_std"] = float(values.std(ddof=1)) if values.size > 1 else None
            entry["values_minus_empty_mean"] = float(np.mean(values - rec["U_empty"]))
        if "items_full" in rec:   # validation noise: 2 standard errors of the paired per-item difference
            diff = np.asarray(rec["items_full"]) - np.asarray(rec["items_empty"])
            entry["full_minus_empty_2se_items"] = float(2 * diff.std(ddof=1) / np.sqrt(diff.size))
        others = base.get("U_full_other_seeds") if "_base" not in rec else None
        if others:
            fulls = np.asarray([base["U_full"], *others.values()], np.float64)
            entry["U_full_seed_std"] = float(fulls.std(ddof=1))
            entry["U_full_seeds"] = fulls.tolist()
            entry["signal_over_seed_noise"] = (entry["full_minus_empty"] / entry["U_full_seed_std"]
                                               if entry["U_full_seed_std"] > 0 else None)
        for label, other_name in (("reference", reference_name), ("default", "default")):
            other = variants.get(other_name)
            if other is None or other_name == name:
                continue
            m = min(len(other["values"]), len(rec["values"]))   # U(full) and the coalitions both have
            entry[f"spearman_vs_{label}"] = spearman([rec["U_full"]] + rec["values"][:m],
                                                     [other["U_full"]] + other["values"][:m])
            entry[f"spearman_vs_{label}_n"] = m + 1
        out[name] = entry
    return out


if __name__ == "__main__":
    main()
