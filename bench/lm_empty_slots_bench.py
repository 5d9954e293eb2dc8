"""What a round of one coalition on 8 slots costs on a CPU, with and without skipping the idle slots (issue #21).

A Shapley run's first round is U(full) alone, and a call's last round is often partly empty; on a CPU the slots of a
step run one after another, so an idle slot that computes costs a full fine-tune and a full scoring. This bench
times, in one process (same load on both sides, alternating, median of ``--repeats``), on a tiny random Llama:

* training, per trainer path: ``shared`` (packed across slots, the CPU default: idle slots have no rows),
  ``packed`` (packed per slot) and ``padded`` (one slot at a time: idle slots skip their forward/backward by
  ``lax.cond`` since this change; ``skip_inactive=False`` is the old behaviour), a round of 1 coalition and a round
  of 8, on 8 slots;
* scoring: the scorer on all 8 slots (the old behaviour) and on the round's one slot (the LM proxy on a CPU now
  scores only the slots of its coalitions, rounded up to a power of two).

Values do not change (tests/test_lm_finetune.py::test_empty_slots_skip_their_step_and_change_no_value,
tests/test_lm_proxy.py::test_utility_shapes_empty_value_and_determinism). JSON to stdout and ``--out``.

    PYTHONPATH=. .venv/bin/python bench/lm_empty_slots_bench.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--players", type=int, default=32)
    parser.add_argument("--validation", type=int, default=64, help="validation sequences scored")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default="shared,packed,padded")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lm_empty_slots_bench.json"))
    return parser.parse_args(argv)


def tiny_model(args):
    import jax.numpy as jnp

    from shed_jax.lm import DecoderConfig
    from shed_jax.lm.load import decoder_from_weights

    config = DecoderConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                           num_layers=args.layers, num_heads=4, num_kv_heads=2, head_dim=args.hidden // 4,
                           rms_norm_eps=1e-6, tie_word_embeddings=False)
    rng = np.random.default_rng(0)
    blocks = {name: 0.02 * rng.standard_normal((args.layers, *shape), np.float32)
              for name, shape in config.lora_shapes().items()}
    blocks["attn_norm"] = np.ones((args.layers, args.hidden), np.float32)
    blocks["mlp_norm"] = np.ones((args.layers, args.hidden), np.float32)
    weights = {"embed_tokens": 0.02 * rng.standard_normal((args.vocab, args.hidden), np.float32), "blocks": blocks,
               "norm": np.ones(args.hidden, np.float32),
               "lm_head": 0.02 * rng.standard_normal((args.hidden, args.vocab), np.float32)}
    return decoder_from_weights(config, weights, dtype=jnp.float32, param_dtype=jnp.float32)


def token_table(n_rows, length, vocab, seed):
    from shed_jax.lm.prompts import TokenTable

    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, n_rows).astype(np.int32)
    ids = rng.integers(10, vocab, (n_rows, length)).astype(np.int32)
    weights = (np.arange(length)[None, :] < lengths[:, None] - 1).astype(np.float32)
    weights[:, : length // 4] = 0.0   # a prompt
    return TokenTable(ids, lengths, np.roll(ids, -1, 1), weights, np.zeros(n_rows, np.int32), 0)


def main(argv=None):
    args = parse_args(argv)
    import jax
    from flax import nnx

    from shed_jax.lm.finetune import FinetuneRecipe, SlotTrainer
    from shed_jax.lm.model import init_lora
    from shed_jax.lm.scoring import StackScorer

    model = tiny_model(args)
    graphdef, state = nnx.split(model)
    table = token_table(args.players, args.length, args.vocab, 0)
    recipe = FinetuneRecipe(steps=args.steps, batch_size=args.batch, learning_rate=1e-3, warmup_steps=1,
                            lora_scale=2.0)
    lora0 = init_lora(model.config, rank=8, key=jax.random.key(0))
    rng = np.random.default_rng(1)
    coalitions = [np.sort(rng.choice(args.players, args.players // 2, replace=False)) for _ in range(args.slots)]
    rounds = {"1 coalition": coalitions[:1], f"{args.slots} coalitions": coalitions}
    result = {"backend": jax.default_backend(), "cpu_count": os.cpu_count(), "args": vars(args),
              "load_before": os.getloadavg(), "training": {}, "scoring": {}}

    trainers = {}
    for path in args.paths.split(","):
        for skip in (False, True):
            if path == "shared" and not skip:
                continue   # packed across slots: idle slots never had rows
            trainer = SlotTrainer(graphdef, state, table, recipe, n_slots=args.slots, lora_init=lora0,
                                  max_length=args.length, packing=path != "padded",
                                  pack_across_slots=None if path == "shared" else (False if path == "packed" else None))
            trainer.skip_inactive = skip
            trainers[f"{path}{'' if path == 'shared' else (', skip' if skip else ', no skip (old)')}"] = trainer

    def timed(run):
        start = time.perf_counter()
        jax.block_until_ready(run())
        return time.perf_counter() - start

    for label, trainer in trainers.items():   # compile every shape first (not timed)
        for members in rounds.values():
            jax.block_until_ready(trainer.train(members, seed=0).lora)
    times = {(label, name): [] for label in trainers for name in rounds}
    for _ in range(args.repeats):   # alternating, so that load changes hit every side alike
        for label, trainer in trainers.items():
            for name, members in rounds.items():
                times[label, name].append(timed(lambda: trainer.train(members, seed=0).lora))
    for label in trainers:
        entry = {name: statistics.median(times[label, name]) for name in rounds}
        entry["one_over_full"] = entry["1 coalition"] / entry[f"{args.slots} coalitions"]
        result["training"][label] = entry

    validation = token_table(args.validation, args.length, args.vocab, 2)
    scorer = StackScorer(graphdef, state, validation, mode="targets", lora_scale=2.0)
    stack = trainers[next(iter(trainers))].train(coalitions, seed=0).lora
    one = jax.tree_util.tree_map(lambda x: x[:1], stack)
    jax.block_until_ready((scorer(stack), scorer(one)))
    score_times = {"all slots (old)": [], "1 slot (now, CPU)": []}
    for _ in range(args.repeats):
        score_times["all slots (old)"].append(timed(lambda: scorer(stack)))
        score_times["1 slot (now, CPU)"].append(timed(lambda: scorer(one)))
    result["scoring"] = {k: statistics.median(v) for k, v in score_times.items()}
    result["scoring"]["one_over_all"] = result["scoring"]["1 slot (now, CPU)"] / result["scoring"]["all slots (old)"]
    result["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
