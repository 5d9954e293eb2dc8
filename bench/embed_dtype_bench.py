"""Embedding compute dtype on this CPU: float32 vs bfloat16, same model, same texts, one process, interleaved.

    PYTHONPATH=. .venv/bin/python bench/embed_dtype_bench.py [--texts 512] [--threads 2] [--batches 64,32]
        [--repeats 2] [--json bench/results/embed_dtype.json]

Texts: ``--texts`` dolly15k records (prompt + response, the pipeline's ``--text all``), sorted longest first and
cut into batches as ``shed_jax.embed`` does. For each repeat and each batch size, float32 then bfloat16 (a
deep copy of the model cast with ``.to(torch.bfloat16)``, what ``embed_texts(dtype="bfloat16")`` runs),
each timed by wall clock and by process CPU time (CPU time is the load-robust one on a shared machine). The
cosine is against float32 at batch 64 (rows renormalised in float32). Prints and writes JSON (atomically).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from bench.bench_embed import dolly_texts, load_torch_model
    from bench.runner import RESULTS_DIR, write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "embed_dtype.json")
    args = parser.parse_args(argv)
    import torch

    texts = dolly_texts(args.texts, seed=1)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    texts = [texts[i] for i in order]
    _, model = load_torch_model()
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    torch.set_num_threads(args.threads)

    def encode(m, batch):
        parts = [m.encode(texts[s:s + batch], batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False).astype(np.float32) for s in range(0, len(texts), batch)]
        out = np.concatenate(parts)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    reference = encode(model, 64)
    encode(models["bfloat16"], 8)  # warm-up
    load_before = list(os.getloadavg())
    rows = []
    for repeat in range(args.repeats):
        for batch in [int(b) for b in args.batches.split(",")]:
            for name, m in models.items():
                wall, cpu = time.perf_counter(), time.process_time()
                emb = encode(m, batch)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                cos = np.sum(emb * reference, axis=1)
                rows.append({"repeat": repeat, "dtype": name, "batch": batch, "records_per_s": len(texts) / wall,
                             "records_per_cpu_s": len(texts) / cpu, "mean_cosine": float(cos.mean()),
                             "min_cosine": float(cos.min())})
                print(json.dumps(rows[-1]), flush=True)
    ratios = []
    for r32 in (r for r in rows if r["dtype"] == "float32"):
        r16 = next(r for r in rows if r["dtype"] == "bfloat16" and r["repeat"] == r32["repeat"]
                   and r["batch"] == r32["batch"])
        ratios.append({"repeat": r32["repeat"], "batch": r32["batch"],
                       "wall_ratio": r16["records_per_s"] / r32["records_per_s"],
                       "cpu_ratio": r16["records_per_cpu_s"] / r32["records_per_cpu_s"]})
    out = {"texts": len(texts), "threads": args.threads, "torch": torch.__version__, "rows": rows,
           "bf16_over_fp32": ratios, "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
           "cpu_flags_amx_bf16": bool(__import__("shed_jax.embed", fromlist=["x"])._cpu_has_native_bf16())}
    write_json_atomic(args.json, out)
    print(json.dumps({"bf16_over_fp32": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
