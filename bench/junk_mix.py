"""Build the dolly junk mixes used to measure junk detection (issue 12), with fixed seeds.

Writes, under ``--out`` (default ``bench/results/junk_mix``):

* ``block.jsonl``      3,000 dolly15k records (seeded sample): 2,400 clean + 600 junk. The junk is *block*
  corrupted: the sample's prompts are embedded (all-MiniLM-L6-v2, the shared embedding cache) and k-means'd
  into 40 topic groups; groups are taken in a seeded random order until 600 records are collected (the last
  group cut), and those 600 records' responses are permuted among themselves (a derangement), so every junk
  record answers another junk record's instruction, from the same few topics.
* ``scattered.jsonl``  the same 3,000 records; 600 records drawn uniformly at random get the response of a
  random *clean* record (never their own), so the junk is scattered over every topic.
* ``*.junk.npy``       bool ``(3000,)`` ground truth (True = junk) in file order.
* ``valid.jsonl``      400 multiple-choice questions drawn (seeded) from MMLU *validation*
  (``mmlu/mmlu_val.jsonl``; never MMLU test items).
* ``meta.json``        the seeds, sizes, source files and the groups that were corrupted.

Junk records keep their instruction and input; only ``output`` is replaced; every other key is untouched.

    .venv/bin/python bench/junk_mix.py [--out DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("SHED_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
N_RECORDS, N_JUNK, N_GROUPS, N_VALID = 3000, 600, 40, 400


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(n)`` with no fixed point (a random cyclic shift of a random order)."""
    order = rng.permutation(n)
    out = np.empty(n, np.int64)
    out[order] = np.roll(order, 1)
    return out


def build(out: Path, seed: int = 0) -> dict:
    from shed_jax import cluster
    from shed_jax.embed import embed_texts

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dolly = read_jsonl(SHARED / "instruct" / "dolly15k.jsonl")
    seen, unique = set(), []
    for i, record in enumerate(dolly):  # drop the 8 exact duplicates first, so "junk" is never a duplicate
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(i)
    pick = np.sort(rng.choice(np.asarray(unique), N_RECORDS, replace=False))
    base = [dict(dolly[i]) for i in pick]

    # block: topic groups of the prompts
    prompts = [(r["instruction"] + ("\n" + r["input"] if r.get("input") else "")) for r in base]
    x = embed_texts(prompts, progress=False)
    km = cluster.kmeans(np.asarray(x, np.float32), N_GROUPS, seed=seed)
    labels = np.asarray(km.labels)
    junk_block = []
    groups = []
    for g in rng.permutation(N_GROUPS):
        members = np.flatnonzero(labels == g)
        take = members[: N_JUNK - len(junk_block)]
        junk_block.extend(take.tolist())
        groups.append(int(g))
        if len(junk_block) >= N_JUNK:
            break
    junk_block = np.asarray(junk_block, np.int64)
    block = [dict(r) for r in base]
    donors = junk_block[derangement(N_JUNK, rng)]
    for target, donor in zip(junk_block, donors):
        block[target]["output"] = base[donor]["output"]
    is_junk_block = np.zeros(N_RECORDS, bool)
    is_junk_block[junk_block] = True

    # scattered: random records get a random clean record's response
    junk_scattered = np.sort(rng.choice(N_RECORDS, N_JUNK, replace=False))
    is_junk_scattered = np.zeros(N_RECORDS, bool)
    is_junk_scattered[junk_scattered] = True
    clean = np.flatnonzero(~is_junk_scattered)
    scattered = [dict(r) for r in base]
    for target in junk_scattered:
        scattered[target]["output"] = base[int(rng.choice(clean))]["output"]

    # both mixes: a junk record's new response differs from its own (dolly has a few repeated responses)
    for records, mask in ((block, is_junk_block), (scattered, is_junk_scattered)):
        same = [i for i in np.flatnonzero(mask) if records[i]["output"] == base[i]["output"]]
        if same:
            print(f"note: {len(same)} junk records drew a response identical to their own")

    mmlu_val = read_jsonl(SHARED / "mmlu" / "mmlu_val.jsonl")
    valid = [mmlu_val[i] for i in np.sort(rng.choice(len(mmlu_val), N_VALID, replace=False))]

    write_jsonl(out / "block.jsonl", block)
    write_jsonl(out / "scattered.jsonl", scattered)
    write_jsonl(out / "valid.jsonl", valid)
    np.save(out / "block.junk.npy", is_junk_block)
    np.save(out / "scattered.junk.npy", is_junk_scattered)
    meta = {"seed": seed, "n_records": N_RECORDS, "n_junk": N_JUNK, "n_groups": N_GROUPS, "n_valid": N_VALID,
            "source": str(SHARED / "instruct" / "dolly15k.jsonl"), "valid_source": str(SHARED / "mmlu" / "mmlu_val.jsonl"),
            "block_groups_corrupted": groups, "dolly_index": pick.tolist()}
    (out / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "results" / "junk_mix"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    meta = build(Path(args.out), seed=args.seed)
    print(json.dumps({k: v for k, v in meta.items() if k != "dolly_index"}))


if __name__ == "__main__":
    main()
