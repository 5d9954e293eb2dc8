"""LM proxy slots over local devices (shed_jax.lm.slot_sharding): the tiny random Llama proxy on 1 and 2 fake CPU
devices gives the same values (within 1e-5 relative), and on 2 devices each device holds half the slots of the
adapters and optimiser state (the local shard shape) while the base weights are replicated.

Each device count runs in its own subprocess (the fake device count must be set before JAX starts).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, types
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    n_devices = int(sys.argv[2])
    import jax, jax.numpy as jnp, numpy as np
    assert jax.local_device_count() == n_devices, jax.devices()
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from test_lm_proxy import CONFIG, MC_ITEMS, _inputs, _write_jsonl, save_hf_checkpoint
    from test_lm_finetune import tiny_config, tiny_tokenizer, tiny_weights
    from shed_jax.data import read_validation
    from shed_jax.proxies.lm import LMProxyConfig, build_lm_proxy
    root = Path(tempfile.mkdtemp())
    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    (root / "tiny").mkdir()
    save_hf_checkpoint(root / "tiny", config, tiny_weights(config, seed=1), tokenizer)
    mc = read_validation(_write_jsonl(root / "mc.jsonl", MC_ITEMS))
    env = types.SimpleNamespace(mc=mc)
    utility = build_lm_proxy(_inputs(env, mc), LMProxyConfig(model=str(root / "tiny"), metric="mc_prob",
                                                             **{**CONFIG, "slots": 4}))
    masks = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0],
                      [1, 1, 0, 0, 1, 0], [0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 1]], bool)
    values = np.asarray(utility(masks)).tolist()
    trainer = utility.trainer
    lora = jax.tree_util.tree_leaves(trainer._slots.lora)[0]
    opt = [x for x in jax.tree_util.tree_leaves(trainer._slots.opt_state) if getattr(x, "ndim", 0) >= 1][0]
    base = jax.tree_util.tree_leaves(trainer.base_state)[0]
    scored = utility.scorer._score_group(trainer.base_state, trainer._slots.lora, utility.scorer._data,
                                         utility.scorer._group_rows[0][1], width=utility.scorer._group_rows[0][0])
    print("RESULT" + json.dumps({
        "values": values, "n_slots": utility.n_slots,
        "lora_global": list(lora.shape), "lora_local": list(lora.addressable_shards[0].data.shape),
        "lora_devices": len(lora.sharding.device_set),
        "opt_local": list(opt.addressable_shards[0].data.shape), "opt_global": list(opt.shape),
        "base_global": list(base.shape), "base_local": list(base.addressable_shards[0].data.shape),
        "base_devices": len(base.sharding.device_set),
        "scores_global": list(scored.shape), "scores_local": list(scored.addressable_shards[0].data.shape)}))
""")


def _run(tmp_path, n_devices):
    script = tmp_path / "slots.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={n_devices}")
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "tests"), str(n_devices)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_lm_slots_split_over_two_devices_give_the_same_values(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert one["n_slots"] == two["n_slots"] == 4
    np.testing.assert_allclose(two["values"], one["values"], rtol=1e-5, atol=0)
    # one device: everything whole on it
    assert one["lora_local"] == one["lora_global"] and one["lora_devices"] == 1
    # two devices: each holds 2 of the 4 slots of the adapters, the optimiser state and the scores
    assert two["lora_global"][0] == 4 and two["lora_local"] == [2] + two["lora_global"][1:]
    assert two["lora_devices"] == 2
    assert two["opt_global"][0] == 4 and two["opt_local"] == [2] + two["opt_global"][1:]
    assert two["scores_global"][1] == 4 and two["scores_local"][1] == 2
    # the base weights are replicated: whole on each device
    assert two["base_local"] == two["base_global"] and two["base_devices"] == 2


def test_slot_mesh_uses_gcd_of_slots_and_devices(monkeypatch):
    import jax

    from shed_jax.lm import slot_sharding

    assert slot_sharding.slot_mesh(4) is None or jax.local_device_count() > 1
    monkeypatch.setenv("SHED_LM_SLOT_DEVICES", "1")
    assert slot_sharding.slot_mesh(8) is None
    tree = {"a": np.zeros((4, 3))}
    assert slot_sharding.place_slots(tree, None) is tree and slot_sharding.place_replicated(tree, None) is tree
