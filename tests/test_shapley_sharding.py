"""shed_jax.sharding helpers, and monte_carlo on 8 fake CPU devices equals the single-device result.

The 8-device run happens in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8, so the
flag never affects this test process.
"""
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from shed_jax import shapley, sharding
from shed_jax.shapley import games

from _helpers import run_on_fake_devices

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
    assert jax.local_device_count() == int(sys.argv[1]) == 8, jax.devices()
    cases = json.loads(sys.argv[2])
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
    out = run_on_fake_devices(tmp_path, SCRIPT, (8,), json.dumps(CASES), timeout=600)[8]
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


# --------------------------------------------------------------------------------------------------------
# The embedding proxy under shard_map: same values on 1, 2 and 8 devices, and each device traces B/D rows
# --------------------------------------------------------------------------------------------------------
PROXY_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    n_expected = int(sys.argv[1])
    assert jax.device_count() == n_expected, (jax.device_count(), n_expected)
    from shed_jax import shapley, sharding
    from shed_jax.proxies import base
    from shed_jax.proxies._bilinear import _coalition_value
    from shed_jax.proxies.embedding import EmbeddingProxyConfig, EmbeddingProxyUtility, ValidationEmbeddings
    rng = np.random.default_rng(7)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    K, d = 24, 16
    val = ValidationEmbeddings.instruction(unit(rng.normal(size=(12, d))), unit(rng.normal(size=(12, d))))
    config = EmbeddingProxyConfig(steps=6, n_distractors=3, min_bucket=8)
    utility = EmbeddingProxyUtility.from_arrays(unit(rng.normal(size=(K, d))), unit(rng.normal(size=(K, d))),
                                                val, config, seed=3)
    assert utility.chunk_size == 1
    masks = rng.random((16, K)) < rng.random((16, 1))
    mesh = sharding.make_mesh()
    direct = jax.jit(lambda m: sharding.evaluate_sharded(utility, m, mesh))(
        sharding.shard_batch(masks, mesh))
    result = shapley.monte_carlo(utility, K, n_permutations=6, removal_step=3, seed=5, batch_size=16)
    shapes = base.traced_mask_shapes(_coalition_value, config, utility.buckets, utility.chunk_size)
    print("RESULT" + json.dumps({"direct": np.asarray(direct).tolist(), "values": result.values.tolist(),
                                 "stderr": result.stderr.tolist(), "shapes": shapes,
                                 "n_evaluations": result.n_evaluations}))
""")


def test_embedding_proxy_sharded_over_1_2_8_devices(tmp_path):
    out = run_on_fake_devices(tmp_path, PROXY_SCRIPT, (1, 2, 8))
    ref = out[1]
    for n in (2, 8):
        # each coalition is evaluated alone (chunk 1 on a CPU), so the split leaves every value unchanged
        np.testing.assert_allclose(out[n]["direct"], ref["direct"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[n]["values"], ref["values"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[n]["stderr"], ref["stderr"], rtol=0, atol=1e-6)
        assert out[n]["n_evaluations"] == ref["n_evaluations"]
    # proof that the work is split: the batched evaluator is traced with one device's block only
    K = 24
    assert set(map(tuple, ref["shapes"])) == {(16, K)}
    for n in (2, 8):
        assert set(map(tuple, out[n]["shapes"])) == {(16 // n, K)}, out[n]["shapes"]


def test_across_processes_is_identity_in_one_process_and_for_host_utilities_in_several(monkeypatch):
    mesh = sharding.make_mesh()
    step = jax.jit(lambda a: a + 1)
    assert sharding.across_processes(step, mesh) is step
    assert sharding.across_processes(step, mesh, jittable=False) is step
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    # a host utility's step stays process-local (the utility itself spreads over the global mesh) ...
    assert sharding.across_processes(step, mesh, jittable=False) is step
    # ... a jitted step gets global arguments and host results
    assert sharding.across_processes(step, mesh) is not step


def test_default_batch_size_is_per_device():
    class Jitted:
        preferred_batch_size = 64

    class Host:
        preferred_batch_size = 16
        jittable = False

    devices = [object()] * 4
    assert sharding.default_batch_size(Jitted(), devices, 1024) == 256
    assert sharding.default_batch_size(Host(), devices, 1024) == 16
    assert sharding.default_batch_size(object(), devices, 1024) == 1024
    assert sharding.default_batch_size(Jitted(), None, 1024) == 64 * jax.local_device_count()


def test_default_batch_size_memory_rule_without_a_preference():
    # about MASK_ELEMENTS_PER_CALL mask elements per call, a power of two, clamped to [default, 4 * default]
    rule = sharding.MASK_ELEMENTS_PER_CALL
    assert rule == 1 << 22
    assert sharding.default_batch_size(object(), None, 1024, n_players=1000) == 4096   # 4,194 -> 4,096
    assert sharding.default_batch_size(object(), None, 1024, n_players=1025) == 2048   # 4,092 -> 2,048
    assert sharding.default_batch_size(object(), None, 1024, n_players=3) == 4096      # clamped above
    assert sharding.default_batch_size(object(), None, 1024, n_players=100_000) == 1024  # clamped below
    assert sharding.default_batch_size(object(), None, 256, n_players=1000) == 1024
    # a preference wins over the rule
    class Jitted:
        preferred_batch_size = 64
    assert sharding.default_batch_size(Jitted(), [object()] * 2, 1024, n_players=1000) == 128


def test_engine_default_call_uses_the_memory_rule():
    # no batch_size, no preference: the engine calls the utility with the rule's batch (n = 1000 -> 4096)
    shapes = []
    w = jnp.linspace(-1.0, 1.0, 1000, dtype=jnp.float32)

    def additive(masks):
        shapes.append(tuple(masks.shape))  # at trace time
        return masks.astype(jnp.float32) @ w

    res = shapley.monte_carlo(additive, 1000, n_permutations=2, seed=0)
    assert set(shapes) == {(4096, 1000)}
    # additive game: every marginal is w_i, up to float32 rounding of sums of size ~sum|w| = 500 (ulp 3e-5)
    np.testing.assert_allclose(res.values, np.asarray(w), atol=8 * np.spacing(np.float32(500)))
