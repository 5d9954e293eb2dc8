"""Tests of shed_jax.pipeline: configuration, fingerprints, stage skipping, resume, outputs, junk detection.

Most tests replace the sentence encoder by a hashing bag-of-words embedding (``fake_embed``) so that they
run in seconds; ``test_refine_keeps_out_junk_with_real_encoder`` uses the real all-MiniLM-L6-v2.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import hashing_embed

from shed_jax import data as shed_data
from shed_jax import pipeline
from shed_jax import synthetic

FAST_PROXY = (("steps", 8), ("rank", 4), ("n_distractors", 3))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """200 records over 8 topics (40 junk records in whole topics) + 40 multiple-choice validation items."""
    return synthetic.make_demo(tmp_path_factory.mktemp("demo"), n_examples=200, n_topics=8, n_validation=40, seed=0)


def make_config(demo_data, tmp_path, **overrides):
    fields = dict(data=str(demo_data.train), valid=str(demo_data.valid), output=str(tmp_path / "out.jsonl"),
                  run_dir=str(tmp_path / "run"), n_clusters=8, n_permutations=8, ratio=0.25,
                  proxy_options=FAST_PROXY, seed=0, proxies_per_cluster=1)  # M pinned: tests of M say so
    fields.update(overrides)
    return pipeline.RefineConfig(**fields)


class CallCounter:
    """Wraps a module function and counts its calls."""

    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        self.real = getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls += 1
            return self.real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)


@pytest.fixture
def counters(monkeypatch):
    from shed_jax import cluster as cluster_module
    from shed_jax import shapley as shapley_module

    return {"kmeans": CallCounter(monkeypatch, cluster_module, "kmeans"),
            "monte_carlo": CallCounter(monkeypatch, shapley_module, "monte_carlo")}


def events(run_dir):
    return [(e["stage"], e["event"]) for e in json.loads((run_dir / "stages.json").read_text())["events"]]


# ------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------


def test_config_validation_and_round_trip():
    cfg = pipeline.RefineConfig(data="d.jsonl", field_map={"instruction": "q"}, proxy_options={"steps": 3},
                                ratio=0.5)
    assert cfg.field_map == (("instruction", "q"),)
    again = pipeline.RefineConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="not both"):
        pipeline.RefineConfig(data="d", ratio=0.1, size=3)
    with pytest.raises(ValueError, match="--sampler: must be one of"):
        pipeline.RefineConfig(data="d", sampler="best")
    with pytest.raises(ValueError, match="ratio"):
        pipeline.RefineConfig(data="d", ratio=1.5)
    with pytest.raises(ValueError, match="--permutations: must be >= 1, got 0"):
        pipeline.RefineConfig(data="d", n_permutations=0)
    assert pipeline.RefineConfig(data="d", beta=0.0).beta == 0.0  # documented as uniform over clusters
    with pytest.raises(ValueError, match="unknown configuration keys"):
        pipeline.RefineConfig.from_dict({"data": "d", "bogus": 1})


def test_defaults_for_clusters_and_removal_step():
    assert pipeline.default_n_clusters(10) == 2
    assert pipeline.default_n_clusters(1) == 1
    assert pipeline.default_n_clusters(400) == 20
    assert pipeline.default_n_clusters(100_000) == 64
    assert pipeline.default_removal_step(8) == 1
    assert pipeline.default_removal_step(64) == 2
    assert pipeline.default_removal_step(1000) == 31


def test_default_run_dir_honours_shed_home(tmp_path, monkeypatch):
    import datetime as dt

    monkeypatch.setenv("SHED_HOME", str(tmp_path))
    now = dt.datetime(2024, 1, 2, 3, 4, 5)
    first = pipeline.default_run_dir("/x/train.jsonl", now=now)
    assert first == tmp_path / "runs" / "train-20240102-030405"
    first.mkdir(parents=True)
    assert pipeline.default_run_dir("/x/train.jsonl", now=now) == tmp_path / "runs" / "train-20240102-030405-2"


def test_fingerprints_change_exactly_downstream():
    base = pipeline.RefineConfig(data="d", n_clusters=4, ratio=0.5)
    fp = pipeline.stage_fingerprints(base, data_sha256="a", n_candidates=100, valid_sha256="v")
    assert fp == pipeline.stage_fingerprints(base, data_sha256="a", n_candidates=100, valid_sha256="v")

    def changed(config=base, data="a", valid="v"):
        new = pipeline.stage_fingerprints(config, data_sha256=data, n_candidates=100, valid_sha256=valid)
        return [s for s in pipeline.STAGES if new[s] != fp[s]]

    assert changed(data="b") == ["embed", "cluster", "value", "select"]
    assert changed(base.replace(model="other")) == ["embed", "cluster", "value", "select"]
    # the embedding dtype changes the vectors; float32 (the default) adds nothing to the fingerprint, so runs made
    # before the option existed stay up to date
    assert changed(base.replace(embed_dtype="bfloat16")) == ["embed", "cluster", "value", "select"]
    assert changed(base.replace(embed_dtype="float32")) == []
    assert changed(base.replace(batch_size=7)) == []  # how the vectors are batched does not change them
    assert changed(base.replace(n_clusters=5)) == ["cluster", "value", "select"]
    assert changed(valid="w") == ["value", "select"]
    assert changed(base.replace(n_permutations=7)) == ["value", "select"]
    assert changed(base.replace(sampler="qwcs")) == ["select"]
    assert changed(base.replace(ratio=None, size=3)) == ["select"]
    # an explicit value equal to the default resolves to the same fingerprint
    # (auto resolves M = 16 for K=4 and 100 candidates: 64 players, default step 2)
    assert base.resolved_proxies_per_cluster(4, 100) == 16
    assert changed(base.replace(removal_step=pipeline.default_removal_step(4 * 16))) == []
    assert changed(base.replace(value_player_budget=63)) == ["value", "select"]  # auto -> 8
    assert changed(base.replace(value_player_budget=70)) == []  # still 16
    # the proxy's options are fingerprinted resolved: a default spelled out changes nothing, a new value (or a
    # new default in a later version) invalidates the stored values
    from shed_jax.proxies import EmbeddingProxyConfig

    default_rank = EmbeddingProxyConfig().rank
    assert changed(base.replace(proxy_options=(("rank", default_rank),))) == []
    assert changed(base.replace(proxy_options=(("rank", default_rank + 4),))) == ["value", "select"]


def test_fingerprint_of_embed_dtype_auto_is_the_resolved_dtype(monkeypatch):
    from shed_jax import embed as embed_module

    def fingerprint(dtype):
        config = pipeline.RefineConfig(data="d", n_clusters=4, ratio=0.5, embed_dtype=dtype)
        return pipeline.stage_fingerprints(config, data_sha256="a", n_candidates=100, valid_sha256="v")

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(embed_module, "_cpu_has_native_bf16", lambda: True)
    assert fingerprint("auto") == fingerprint("bfloat16") != fingerprint("float32")
    monkeypatch.setattr(embed_module, "_cpu_has_native_bf16", lambda: False)
    assert fingerprint("auto") == fingerprint("float32") != fingerprint("bfloat16")


# ------------------------------------------------------------------------------------------------------
# the whole pipeline
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(demo_data, tmp_path_factory):
    """One full refine (hashing embedding, real k-means, real proxy utility and Shapley engine), shared."""
    from shed_jax import embed as embed_module

    root = tmp_path_factory.mktemp("reference")
    config = make_config(demo_data, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(embed_module, "embed_texts", lambda texts, **kw: hashing_embed(list(texts), **kw))
        result = pipeline.refine(config, progress=False)
    return config, result, root


def fake_monte_carlo(calls):
    """A stand-in for shapley.monte_carlo (records its keyword arguments; values = 0.01 * player index)."""
    from shed_jax import shapley as shapley_module

    def run(utility, n_players, **kwargs):
        calls.append(dict(kwargs))
        values = 0.01 * np.arange(n_players, dtype=np.float64)
        p = kwargs["n_permutations"]
        history = {"n_permutations": np.array([p]), "values": values[None], "stderr": np.full((1, n_players), .001)}
        group_values = group_stderr = None
        if kwargs.get("groups") is not None:  # several players per cluster: the clusters' mean member values
            owner = np.asarray(kwargs["groups"])
            group_values = np.bincount(owner, values) / np.bincount(owner)
            group_stderr = np.full(group_values.shape, 0.001)
            history.update(group_values=group_values[None], group_stderr=group_stderr[None])
        return shapley_module.ShapleyResult(
            values=values, stderr=np.full(n_players, 0.001), n_evaluations=p * n_players + 2, n_permutations=p,
            n_samples=p, removal_step=kwargs["removal_step"], u_full=0.5, u_empty=0.25,
            stop_reason="n_permutations", history=history, group_values=group_values, group_stderr=group_stderr)
    return run


def copy_run(reference_run, tmp_path):
    import shutil

    config, _, root = reference_run
    shutil.copytree(root / "run", tmp_path / "run")
    return config.replace(run_dir=str(tmp_path / "run"), output=str(tmp_path / "out.jsonl"))


def test_refine_writes_the_run_directory_and_exact_records(demo_data, reference_run):
    config, result, root = reference_run
    run = root / "run"
    n, k, budget = 200, 8, 50

    # OUT.jsonl: the selected input lines, byte for byte, in selection order
    lines = demo_data.train.read_text(encoding="utf-8").splitlines()
    out_lines = (root / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert result.indices.shape == (budget,)
    assert len(set(result.indices.tolist())) == budget
    assert out_lines == [lines[i] for i in result.indices]
    sidecar = [json.loads(x) for x in (root / "out.scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in sidecar] == result.indices.tolist()

    clusters = np.load(run / "clusters.npz")
    assert clusters["labels"].shape == (n,) and clusters["labels"].dtype == np.int32
    assert clusters["centroids"].shape == (k, 128) and clusters["proxy_index"].shape == (k,)
    assert np.array_equal(clusters["labels"][clusters["proxy_index"]], np.arange(k))  # proxy in its cluster

    values = json.loads((run / "values.json").read_text())
    assert len(values["cluster_values"]) == k and len(values["stderr"]) == k
    assert values["n_permutations"] == 8 and values["removal_step"] == 1
    assert values["u_full"] is not None and values["u_empty"] is not None
    assert values["utility"]["proxy"] == "embedding" and values["utility"]["steps"] == 8
    conv = np.load(run / "convergence.npz")
    assert conv["values"].shape == (conv["n_permutations"].shape[0], k)
    assert conv["n_permutations"][-1] == 8
    np.testing.assert_allclose(conv["values"][-1], values["cluster_values"], rtol=1e-6)

    scores = [json.loads(x) for x in (run / "scores.jsonl").read_text().splitlines()]
    assert [s["index"] for s in scores] == list(range(n))
    assert sum(s["selected"] for s in scores) == budget
    assert sum(s["is_proxy"] for s in scores) == k
    for s in scores:
        assert s["value"] == pytest.approx(values["cluster_values"][s["cluster"]])
    selection = json.loads((run / "selection.json").read_text())
    assert selection["indices"] == result.indices.tolist() and selection["budget"] == budget
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget"] == budget and summary["n_clusters"] == k and summary["stages"] == result.stages
    assert result.stages == dict.fromkeys(pipeline.STAGES, "computed")
    assert result.report == run / "report.html" and result.report.stat().st_size > 1000
    assert summary["report"] == str(run / "report.html")
    assert pipeline.load_config(run) == config
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert all(stages[s]["status"] == "done" for s in pipeline.STAGES)

    # QOCS: every cluster that fits whole in the budget (in value order) is in the selection
    labels = clusters["labels"]
    order = np.argsort(-np.asarray(values["cluster_values"]), kind="stable")
    sizes = np.bincount(labels, minlength=k)
    whole = order[: np.searchsorted(np.cumsum(sizes[order]), budget, side="right")]
    assert set(whole.tolist()) <= set(labels[result.indices].tolist())
    assert np.all(np.isin(labels[result.indices], order[: whole.size + 1]))


def test_rerun_skips_finished_stages_and_reruns_only_downstream(reference_run, tmp_path, fake_embed, counters,
                                                                monkeypatch):
    _, reference, _ = reference_run
    config = copy_run(reference_run, tmp_path)
    again = pipeline.refine(config, progress=False, report=False)
    assert again.stages == dict.fromkeys(pipeline.STAGES, "skipped")
    assert counters["kmeans"].calls == 0 and counters["monte_carlo"].calls == 0 and fake_embed == []
    np.testing.assert_array_equal(again.indices, reference.indices)
    np.testing.assert_array_equal(again.cluster_values, reference.cluster_values)
    assert (tmp_path / "out.jsonl").read_bytes() == (reference_run[2] / "out.jsonl").read_bytes()

    qwcs = pipeline.refine(config.replace(sampler="qwcs", beta=2.0), progress=False, report=False)
    assert qwcs.stages == {"embed": "skipped", "cluster": "skipped", "value": "skipped", "select": "computed"}
    assert counters["kmeans"].calls == 0 and counters["monte_carlo"].calls == 0

    from shed_jax import shapley as shapley_module

    calls = []
    monkeypatch.setattr(shapley_module, "monte_carlo", fake_monte_carlo(calls))
    with pytest.raises(pipeline.PipelineError, match=r"holds a finished valuation of \d+ permutations with other "
                                                     r"options: .*--removal-step.*--restart discards it"):
        pipeline.refine(config.replace(n_permutations=3, removal_step=2), progress=False, report=False)
    more = pipeline.refine(config.replace(n_permutations=3, removal_step=2), progress=False, report=False,
                           restart=True)
    assert more.stages == {"embed": "skipped", "cluster": "skipped", "value": "computed", "select": "computed"}
    assert counters["kmeans"].calls == 0 and len(calls) == 1
    assert calls[0]["n_permutations"] == 3 and calls[0]["removal_step"] == 2 and calls[0]["seed"] == 0
    assert calls[0]["checkpoint_dir"] == str(tmp_path / "run" / "shapley_ckpt")
    assert json.loads((tmp_path / "run" / "values.json").read_text())["cluster_values"] == pytest.approx(
        0.01 * np.arange(8))

    prompts_only = pipeline.refine(config.replace(text="prompt"), progress=False, report=False)
    assert prompts_only.stages == dict.fromkeys(pipeline.STAGES, "computed")
    assert counters["kmeans"].calls == 1 and len(calls) == 2 and 200 in fake_embed
    log = events(tmp_path / "run")
    assert ("select", "skipped") in log and ("cluster", "computed") in log


def test_interrupted_valuation_resumes_from_checkpoint(reference_run, demo_data, tmp_path, fake_embed,
                                                        monkeypatch):
    """Ctrl-C in the middle of the Shapley stage; resume=True continues and matches an uninterrupted run."""
    from shed_jax import shapley as shapley_module

    real = shapley_module.monte_carlo
    _, reference, _ = reference_run
    config = make_config(demo_data, tmp_path)
    statuses = []

    def interrupt_after_two_chunks(status):
        statuses.append(status.n_permutations)
        if len(statuses) == 2:
            raise KeyboardInterrupt

    def interrupted(utility, n, **kwargs):
        kwargs.update(progress=interrupt_after_two_chunks, permutations_per_chunk=2)
        return real(utility, n, **kwargs)

    monkeypatch.setattr(shapley_module, "monte_carlo", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.refine(config, progress=False, report=False)
    run = tmp_path / "run"
    assert not (tmp_path / "out.jsonl").exists()
    assert not (run / "values.json").exists()
    assert (run / "shapley_ckpt").is_dir()
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert stages["cluster"]["status"] == "done" and stages["value"]["status"] == "running"

    def resuming(utility, n, **kwargs):
        kwargs.update(progress=lambda status: statuses.append(status.n_permutations), permutations_per_chunk=2)
        return real(utility, n, **kwargs)

    monkeypatch.setattr(shapley_module, "monte_carlo", resuming)
    statuses.clear()
    result = pipeline.refine(config, progress=False, resume=True, report=False)
    # the first permutations came from the checkpoint: the resumed run reported only the later chunks
    assert statuses and statuses[0] > 2 and statuses[-1] == 8
    assert result.stages["embed"] == "skipped" and result.stages["cluster"] == "skipped"
    assert ("value", "resumed") in events(run)
    np.testing.assert_allclose(result.cluster_values, reference.cluster_values, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.indices, reference.indices)
    assert (tmp_path / "out.jsonl").read_bytes() == (reference_run[2] / "out.jsonl").read_bytes()


def test_partial_valuation_is_kept_without_resume(reference_run, tmp_path, fake_embed, monkeypatch):
    """A checkpoint of an unfinished valuation is never deleted without restart=True: resume=True continues it,
    neither refuses (one line with its progress, nothing deleted), restart=True discards it."""
    from shed_jax import shapley as shapley_module

    config = copy_run(reference_run, tmp_path)
    run = tmp_path / "run"
    shutil.rmtree(run / "shapley_ckpt")

    def partial():
        state = json.loads((run / "stages.json").read_text())
        state["stages"]["value"]["status"] = "running"  # as left by a killed run
        (run / "stages.json").write_text(json.dumps(state))
        (run / "values.json").unlink(missing_ok=True)
        (run / "shapley_ckpt" / "3").mkdir(parents=True, exist_ok=True)  # a complete step of 3 permutations
        (run / "shapley_ckpt" / "marker").write_text("partial")

    seen = []

    def record(utility, n, **kwargs):
        ckpt = Path(kwargs["checkpoint_dir"])
        seen.append(ckpt.is_dir() and (ckpt / "marker").exists())
        return fake_monte_carlo([])(utility, n, **kwargs)

    monkeypatch.setattr(shapley_module, "monte_carlo", record)
    partial()
    messages = []
    pipeline.refine(config, progress=False, log=messages.append, resume=True, report=False)
    assert seen == [True]  # kept for the engine to resume from

    partial()
    with pytest.raises(pipeline.PipelineError, match=rf"shapley_ckpt holds a partial valuation \(3 of "
                                                     rf"{config.n_permutations} permutations\): --resume continues "
                                                     r"it, --restart discards it"):
        pipeline.refine(config, progress=False, log=messages.append, report=False)
    assert (run / "shapley_ckpt" / "marker").exists() and seen == [True]  # nothing deleted, nothing run
    pipeline.refine(config, progress=False, log=messages.append, report=False, restart=True)
    assert seen == [True, False]  # discarded: started from scratch
    assert any("--restart: discarding a partial valuation" in m for m in messages)


def test_duplicates_are_never_clustered_or_selected(tmp_path, fake_embed, demo_data, monkeypatch):
    from shed_jax import shapley as shapley_module

    monkeypatch.setattr(shapley_module, "monte_carlo", fake_monte_carlo([]))
    lines = demo_data.train.read_text(encoding="utf-8").splitlines()
    data = tmp_path / "dups.jsonl"
    data.write_text("\n".join(lines + lines[:10]) + "\n", encoding="utf-8")  # 200..209 repeat 0..9
    config = make_config(demo_data, tmp_path, data=str(data), ratio=None, size=200)
    result = pipeline.refine(config, progress=False, report=False)
    assert np.all(result.labels[200:] == -1) and np.all(result.labels[:200] >= 0)
    assert sorted(result.indices.tolist()) == list(range(200))  # size 200 = every candidate
    scores = [json.loads(x) for x in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert [s.get("duplicate_of") for s in scores[200:]] == list(range(10))
    assert all(s["cluster"] == -1 and s["value"] is None and not s["selected"] for s in scores[200:])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_duplicates"] == 10
    with pytest.raises(shed_data.DataError, match="larger"):
        pipeline.refine(config.replace(size=201), progress=False, report=False)


def test_user_errors_are_raised_before_any_stage(demo_data, tmp_path, fake_embed):
    base = make_config(demo_data, tmp_path)
    with pytest.raises(ValueError, match="K=300"):
        pipeline.refine(base.replace(n_clusters=300), progress=False, report=False)
    with pytest.raises(ValueError, match="give a budget"):
        pipeline.refine(base.replace(ratio=None), progress=False, report=False)
    with pytest.raises(shed_data.DataError, match="not found"):
        pipeline.refine(base.replace(valid=str(tmp_path / "missing.jsonl")), progress=False, report=False)
    with pytest.raises(ValueError, match="removal-step"):
        pipeline.refine(base.replace(removal_step=9), progress=False, report=False)
    with pytest.raises(ValueError, match="overwrite"):
        pipeline.refine(base.replace(output=str(demo_data.train)), progress=False, report=False)
    with pytest.raises(ValueError, match="unknown option"):
        pipeline.refine(base.replace(proxy_options={"stepz": 1}), progress=False, report=False)
    with pytest.raises(ValueError, match="validation"):
        pipeline.refine(base.replace(valid=None), progress=False, report=False)
    with pytest.raises(shed_data.DataError, match="no key"):
        pipeline.refine(base.replace(text="instruction,nope"), progress=False, report=False)
    assert fake_embed == []  # nothing was embedded
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "run" / "clusters.npz").exists()


# ------------------------------------------------------------------------------------------------------
# quality: the real encoder finds the junk
# ------------------------------------------------------------------------------------------------------


# Measured 2026-11-29 with the default proxy (InfoNCE fine-tune of the cosine weight, metric "prob"), 20
# permutations, QOCS junk rate at ratio 0.2 (input 0.20, bound 0.05), make_demo(320 records, 16 topics, 80
# validation items over every topic): K=32 -> seeds 0-5: 0.000 0.000 0.000 0.000 0.125 0.016; K=16 -> 0.094
# 0.312 0.000 0.000 0.000 0.000 (with K = #topics k-means merges a junk topic into a good cluster whose proxy
# is good). The former default (spectral loss on low-rank factors, metric "accuracy") gave 0.156 0.000 0.391 at
# K=16. This test checks the first three data seeds, 0-2, at K=32 (two clusters per topic) -- the first three
# by number, fixed before measuring, three because each costs ~20 s of CI -- against the bound
# selected rate <= input rate / 4 (= 0.05, issue 4's bar). Seeds 4 (0.125) and 5 (0.016, within the bound)
# are outside the test; seed 4 FAILS the bound and is reported in README.md's junk-detection table.
# Seeds 1 and 2 run in the slow suite (35-55 s each under load on 2 cores); the default run keeps seed 0.
@pytest.mark.parametrize("data_seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                       pytest.param(2, marks=pytest.mark.slow)])
def test_refine_keeps_out_junk_with_real_encoder(tmp_path, data_seed):
    """Generated data, 20% junk in whole topics: the QOCS selection at ratio 0.2 keeps < 1/4 of that rate.

    Real all-MiniLM-L6-v2 encoder, real k-means, embedding proxy utility with its default configuration
    and the real Shapley engine (K=32, 20 permutations). ~20 s per seed (model load, embedding, ~600 evaluations).
    """
    demo = synthetic.make_demo(tmp_path / "data", n_examples=320, n_topics=16, n_validation=80, seed=data_seed)
    config = pipeline.RefineConfig(data=str(demo.train), valid=str(demo.valid), output=str(tmp_path / "o.jsonl"),
                                   run_dir=str(tmp_path / "run"), n_clusters=32, n_permutations=20, ratio=0.2,
                                   seed=0, proxies_per_cluster=1)  # the numbers above were measured with M=1
    result = pipeline.refine(config, progress=False, report=False)
    junk = np.zeros(320, bool)
    junk[demo.junk_indices] = True
    input_rate = junk.mean()
    selected_rate = junk[result.indices].mean()
    assert input_rate == pytest.approx(0.2)
    assert selected_rate <= input_rate / 4, (selected_rate, input_rate, result.summary["value"])
    # and the values are not noise: junk clusters' mean value is below the clean clusters'
    values = np.asarray(result.cluster_values)
    cluster_junk = np.array([junk[result.labels == k].mean() for k in range(values.shape[0])])
    assert values[cluster_junk > 0.5].mean() < values[cluster_junk <= 0.5].mean()


# ------------------------------------------------------------------------------------------------------
# several proxies per cluster
# ------------------------------------------------------------------------------------------------------
def test_cluster_means_against_a_loop():
    rng = np.random.default_rng(3)
    owners = np.array([0, 0, 1, 2, 2, 2])
    values, stderr = rng.normal(size=6), rng.uniform(0.1, 1.0, 6)
    means, errors = pipeline.cluster_means(values, stderr, owners, 3)
    for k in range(3):
        assert means[k] == pytest.approx(values[owners == k].mean())
        assert errors[k] == pytest.approx(np.sqrt(np.sum(stderr[owners == k] ** 2)) / np.sum(owners == k))
    history, _ = pipeline.cluster_means(np.stack([values, 2 * values]), np.stack([stderr, stderr]), owners, 3)
    np.testing.assert_allclose(history, np.stack([means, 2 * means]))
    with pytest.raises(ValueError, match="without a valued member"):
        pipeline.cluster_means(values, stderr, owners, 4)


def test_proxies_per_cluster_values_members_and_averages(demo_data, tmp_path, fake_embed):
    config = make_config(demo_data, tmp_path, proxies_per_cluster=3)
    assert config.resolved_removal_step(100) == pipeline.default_removal_step(300) == 9  # 3 x 100 players
    result = pipeline.refine(config, progress=False, report=False)
    payload = json.loads((tmp_path / "run" / "values.json").read_text())
    members = payload["members"]
    assert payload["proxies_per_cluster"] == 3
    labels = result.labels
    sizes = np.bincount(labels[labels >= 0], minlength=8)
    assert len(members["index"]) == int(np.minimum(sizes, 3).sum())
    index, owner = np.array(members["index"]), np.array(members["cluster"])
    assert np.all(labels[index] == owner)
    proxy_index = np.array(payload["proxy_index"])
    assert all(index[owner == k][0] == proxy_index[k] for k in range(8))  # each cluster's proxy is a player
    member_values = np.array(members["value"])
    # the engine's per-permutation cluster means (float32 sums) equal the members' mean up to rounding
    np.testing.assert_allclose(payload["cluster_values"],
                               [member_values[owner == k].mean() for k in range(8)], rtol=0, atol=1e-6)
    convergence = np.load(tmp_path / "run" / "convergence.npz")
    assert convergence["values"].shape[1] == 8
    np.testing.assert_allclose(convergence["values"][-1], payload["cluster_values"], rtol=1e-6, atol=1e-9)
    # one proxy per cluster values exactly the K proxies, and the option is part of the value fingerprint
    single = make_config(demo_data, tmp_path, proxies_per_cluster=1)
    fp = lambda c: pipeline.stage_fingerprints(c, data_sha256="a", n_candidates=200, valid_sha256="v")  # noqa: E731
    assert fp(single)["cluster"] == fp(config)["cluster"] and fp(single)["value"] != fp(config)["value"]
    with pytest.raises(pipeline.PipelineError, match="--proxies-per-cluster: must be auto or >= 1"):
        make_config(demo_data, tmp_path, proxies_per_cluster=0)


@pytest.mark.slow
def test_refine_keeps_out_junk_with_the_default_auto_m(tmp_path):
    """The junk test above with the default `--proxies-per-cluster auto` (what users get): data seed 0, the first
    by number, fixed before measuring, against the same bound (selected junk rate <= input rate / 4)."""
    demo = synthetic.make_demo(tmp_path / "data", n_examples=320, n_topics=16, n_validation=80, seed=0)
    config = pipeline.RefineConfig(data=str(demo.train), valid=str(demo.valid), output=str(tmp_path / "o.jsonl"),
                                   run_dir=str(tmp_path / "run"), n_clusters=32, n_permutations=20, ratio=0.2,
                                   seed=0)
    assert config.proxies_per_cluster == "auto"
    result = pipeline.refine(config, progress=False, report=False)
    values = json.loads((tmp_path / "run" / "values.json").read_text())
    assert values["proxies_per_cluster"] > 1  # K=32, 320 records: auto values several players per cluster
    junk = np.zeros(320, bool)
    junk[demo.junk_indices] = True
    selected_rate = junk[result.indices].mean()
    assert selected_rate <= junk.mean() / 4, (selected_rate, values["proxies_per_cluster"])
