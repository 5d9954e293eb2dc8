"""shed_jax.sharding helpers, and monte_carlo on 8 fake CPU devices equals the single-device result.

The 8-device run happens in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8, so the
flag never affects this test process.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from shed_jax import shapley, sharding
from shed_jax.shapley import games

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("games.GloveGame(5, 6)", dict(n_permutations=60, removal_step=1, seed=3, batch_size=12)),
    ("games.AirportGame([1.0, 2.5, 3.0, 4.5, 7.0, 7.25, 9.0, 11.0, 12.5])",
     dict(n_permutations=40, removal_step=2, seed=1, antithetic=True, truncation_tol=0.01, batch_size=5)),
]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from shed_jax import shapley, sharding
    from shed_jax.shapley import games
    assert jax.local_device_count() == 8, jax.devices()
    cases = json.loads(sys.argv[1])
    out = {"results": []}
    for game_src, kwargs in cases:
        game = eval(game_src, {"games": games})
        multi = shapley.monte_carlo(game, game.n_players, **kwargs)
        single = shapley.monte_carlo(game, game.n_players, devices=jax.devices()[:1], **kwargs)
        out["results"].append({"values": multi.values.tolist(), "stderr": multi.stderr.tolist(),
                               "n_evaluations": multi.n_evaluations,
                               "single_values": single.values.tolist(), "single_stderr": single.stderr.tolist()})
    mesh = sharding.make_mesh()
    x = sharding.shard_batch(np.arange(32.0).reshape(16, 2), mesh)
    out["mesh_shape"] = dict(mesh.shape)
    out["n_shards"] = len(x.addressable_shards)
    out["shard_shape"] = list(x.addressable_shards[0].data.shape)
    try:
        sharding.shard_batch(np.zeros((12, 2)), mesh)
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print("RESULT" + json.dumps(out))
""")


def test_eight_devices_match_single_device(tmp_path):
    script = tmp_path / "multi.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
    proc = subprocess.run([sys.executable, str(script), json.dumps(CASES)], env=env, capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    line = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])
    assert out["mesh_shape"] == {"coalitions": 8}
    assert out["n_shards"] == 8 and out["shard_shape"] == [2, 2]
    assert "multiple of the 8 devices" in out["indivisible_error"]
    for (game_src, kwargs), got in zip(CASES, out["results"]):
        game = eval(game_src, {"games": games})
        here = shapley.monte_carlo(game, game.n_players, **kwargs)      # this process: 1 device
        # integer-valued glove game: bitwise equal; float airport game: equal up to float32 rounding
        exact_equal = "Glove" in game_src
        for key, ref in (("values", here.values), ("stderr", here.stderr)):
            for got_values in (got[key], got["single_" + key]):
                if exact_equal:
                    np.testing.assert_array_equal(np.asarray(got_values), ref)
                else:
                    np.testing.assert_allclose(np.asarray(got_values), ref, rtol=1e-6, atol=1e-6)
        assert got["n_evaluations"] == here.n_evaluations


def test_mesh_and_logical_shardings_single_process():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("coalitions",)
    assert mesh.devices.size == jax.local_device_count()
    s = sharding.logical_sharding(mesh, "coalitions", None)
    assert s.spec == PartitionSpec("coalitions", None)
    assert sharding.logical_sharding(mesh, "data", None).spec == PartitionSpec("coalitions", None)
    assert sharding.logical_sharding(mesh).spec == PartitionSpec()
    with pytest.raises(ValueError, match="unknown logical axis"):
        sharding.logical_sharding(mesh, "model")
    with pytest.raises(ValueError, match="twice"):
        sharding.logical_sharding(mesh, "data", "coalitions")
    x = sharding.shard_batch(jnp.ones((4, 3)), mesh, axis="data")
    assert x.shape == (4, 3) and x.sharding.spec == PartitionSpec("coalitions", None)
    with pytest.raises(ValueError, match="scalar"):
        sharding.shard_batch(jnp.float32(1), mesh)
    with pytest.raises(ValueError, match="at least one device"):
        sharding.make_mesh([])
