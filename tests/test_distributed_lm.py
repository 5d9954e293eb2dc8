"""The LM proxy across processes: `shed refine --distributed --proxy lm:CHECKPOINT` on two processes on 127.0.0.1
(jax.distributed, gloo CPU collectives), each with one fake CPU device, against one process with one device and
the same slot count (4): the same U(full), U(empty) and cluster values (within 1e-5 relative to the utility's
scale), the same selection and output; and the split is real: inside every process the adapters' local shard holds
2 of the 4 slots (the slot axis spans the global mesh), while the base weights are whole on each device. A process
killed during the fine-tunes makes the other exit with the watchdog's one line, and `--resume` on both finishes with
the uninterrupted run's outputs.

The LM is a tiny random Llama written by the test (tests/_helpers.write_tiny_checkpoint); the embedding is the
hashing stand-in of conftest.py. Every process is started with a deadline and killed in ``finally``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from _helpers import assert_dead_peer_line, reap, write_tiny_checkpoint
from shed_jax.demo import synthetic
from test_distributed_cli import ROOT, _env, _finish, _free_port

LM_OPTIONS = ["--proxy-option", "steps=2", "--proxy-option", "warmup_steps=0", "--proxy-option", "batch_size=2",
              "--proxy-option", "max_length=48", "--proxy-option", "slots=4", "--proxy-option", "dtype=float32",
              "--proxy-option", "max_validation=8", "--proxy-option", "prompt_format=alpaca"]

# the CLI with the hashing encoder; every fine-tune round records the adapters' shard shapes of this process
DRIVER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    record = sys.argv[2]
    from conftest import hashing_embed
    from shed_jax import embed
    embed._get_model = lambda *args, **kwargs: None
    embed._encode = lambda encoder, texts, **kwargs: hashing_embed(list(texts))
    import jax
    from shed_jax.lm import finetune
    train = finetune.SlotTrainer.train
    def recorded(self, *args, **kwargs):
        slots = train(self, *args, **kwargs)
        lora = jax.tree_util.tree_leaves(slots.lora)[0]
        base = jax.tree_util.tree_leaves(self.base_state)[0]
        with open(f"{record}-{jax.process_index()}.json", "w") as f:
            json.dump({"lora_global": list(lora.shape), "lora_local": [list(s.data.shape) for s in lora.addressable_shards],
                       "lora_devices": len(lora.sharding.device_set), "base_global": list(base.shape),
                       "base_local": [list(s.data.shape) for s in base.addressable_shards]}, f)
        return slots
    finetune.SlotTrainer.train = recorded
    from shed_jax.cli import main
    main(sys.argv[3:])
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_lm")
    data = synthetic.make_demo(root / "data", n_examples=60, n_topics=4, n_validation=16, seed=0)
    return types.SimpleNamespace(data=data, checkpoint=write_tiny_checkpoint(root / "tiny", seed=2))


def _argv(setup, work: Path) -> list[str]:
    return ["refine", str(setup.data.train), "--valid", str(setup.data.valid), "--ratio", "0.25",
            "-o", str(work / "out.jsonl"), "--run-dir", str(work / "run"), "--clusters", "4", "--permutations", "2",
            "--proxies-per-cluster", "1", "--proxy", f"lm:{setup.checkpoint}", *LM_OPTIONS, "-q"]


def _start(argv, work: Path, n_processes: int, faults: dict | None = None):
    port = _free_port()
    procs = []
    for process_id in range(n_processes):
        extra = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n_processes),
                 "--process-id", str(process_id)] if n_processes > 1 else []
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "tests"), str(work / "shards"),
                                       *argv, *extra], env=_env(work, 1, (faults or {}).get(process_id)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _run(argv, work: Path, n_processes: int):
    procs = _start(argv, work, n_processes)
    try:
        return _finish(procs)
    finally:
        reap(procs)


def _outputs(work: Path) -> dict:
    values = json.loads((work / "run" / "values.json").read_text())
    return {"values": np.asarray(values["cluster_values"], float), "u_full": values["u_full"],
            "u_empty": values["u_empty"], "n_slots": values["utility"].get("n_slots"),
            "selection": json.loads((work / "run" / "selection.json").read_text())["indices"],
            "out": (work / "out.jsonl").read_bytes()}


@pytest.fixture(scope="module")
def one(setup, tmp_path_factory):
    """The reference: one process with one device (its work directory)."""
    work = tmp_path_factory.mktemp("dist_lm_one")
    for code, _, err in _run(_argv(setup, work), work, 1):
        assert code == 0, err[-3000:]
    return work


@pytest.mark.slow
def test_lm_proxy_on_two_processes_equals_one_process_and_splits_the_slots(setup, one, tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    for code, _, err in _run(_argv(setup, two), two, 2):
        assert code == 0, err[-3000:]
    want, got = _outputs(one), _outputs(two)
    scale = max(abs(want["u_full"]), abs(want["u_empty"]))
    assert got["u_full"] == pytest.approx(want["u_full"], rel=1e-5)
    assert got["u_empty"] == pytest.approx(want["u_empty"], rel=1e-5)
    np.testing.assert_allclose(got["values"], want["values"], rtol=0, atol=1e-5 * scale)
    assert got["selection"] == want["selection"] and got["out"] == want["out"]
    # one process, one device: the 4 slots whole on it
    single = json.loads((one / "shards-0.json").read_text())
    assert single["lora_global"][0] == 4 and single["lora_local"] == [single["lora_global"]]
    # two processes: the slot axis spans both; each process's one device holds 2 of the 4 slots
    for process in (0, 1):
        shards = json.loads((two / f"shards-{process}.json").read_text())
        assert shards["lora_global"] == single["lora_global"] and shards["lora_devices"] == 2
        assert shards["lora_local"] == [[2] + shards["lora_global"][1:]]
        assert shards["base_local"] == [shards["base_global"]]  # base weights replicated
    assert not (two / "run" / "logs" / "process-1.log").read_text().count("Traceback")


@pytest.mark.slow
def test_a_process_killed_during_lm_fine_tunes_stops_the_other_then_resume_finishes_identically(setup, one, tmp_path):
    from test_distributed_cli import HEARTBEAT_S

    work = tmp_path / "two"
    work.mkdir()
    # process 1 dies (SIGKILL) after dispatching its 3rd fine-tune step, inside the valuation's rounds
    procs = _start(_argv(setup, work), work, 2, faults={1: "lm_step:3:kill"})
    try:
        procs[1].wait(timeout=600)
        assert procs[1].returncode == -9
        _, stderr = procs[0].communicate(timeout=HEARTBEAT_S + 60)
    finally:
        reap(procs)
    assert procs[0].returncode == 3, stderr[-3000:]
    assert_dead_peer_line(stderr, HEARTBEAT_S)
    assert not (work / "out.jsonl").exists()
    procs = _start(["refine", "--resume", "--run-dir", str(work / "run"), "-q"], work, 2)
    try:
        for code, _, err in _finish(procs):
            assert code == 0, err[-3000:]
    finally:
        reap(procs)
    want, got = _outputs(one), _outputs(work)
    scale = max(abs(want["u_full"]), abs(want["u_empty"]))
    np.testing.assert_allclose(got["values"], want["values"], rtol=0, atol=1e-5 * scale)
    assert got["selection"] == want["selection"] and got["out"] == want["out"]


def test_slots_that_do_not_fill_every_process_device_are_one_line_error(setup, monkeypatch):
    """With several processes every device gets the same number of slots: an explicit slot count that is not a
    multiple of the global device count is refused before any work (naming the option)."""
    from shed_jax.data import read_validation
    from shed_jax.errors import UserError
    from shed_jax.lm import slot_sharding
    from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy

    monkeypatch.setattr(slot_sharding, "multi_process", lambda: True)
    monkeypatch.setattr(slot_sharding, "slot_device_count", lambda: 2)
    inputs = types.SimpleNamespace(prompts=("a b", "c d"), responses=("e", "f"), validation=read_validation(
        setup.data.valid), seed=0, progress=False)
    config = LMProxyConfig(model=str(setup.checkpoint), slots=3, max_length=48, dtype="float32", max_validation=4,
                           prompt_format="alpaca")
    with pytest.raises(UserError, match=r"slots=3: .* splits the slots over their 2 devices, so slots must be a "
                                        r"multiple of 2") as error:
        build_lm_proxy(inputs, config)
    assert error.value.field == "--proxy-option slots"
