"""bench/kmeans_profile.py and the k-means worker of bench/scaleout_bench.py run on tiny inputs and report what
they promise (phases per chunk size, per-thread CPU seconds, the same labels on 1 and 2 devices)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_kmeans_profile_reports_every_phase_per_chunk_size(tmp_path):
    from bench import kmeans_profile

    out = tmp_path / "profile.json"
    report = kmeans_profile.main(["--n", "600", "--d", "8", "--k", "12", "--iters", "3", "--components", "6",
                                  "--chunk-sizes", "64", "256", "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report["per_chunk_size"]) == {"64", "256"}
    for phases in report["per_chunk_size"].values():
        for name in ("gemm_s", "assign_s", "update_s", "lloyd_s"):
            assert len(phases[name]["times"]) == 2 and phases[name]["min"] == min(phases[name]["times"]) > 0
        # the chunk size changes the blocking, never the labels
        assert phases["labels_equal_first_chunk_size"] is True
    assert len(report["sklearn_s"]["times"]) == 2 and report["sklearn_s"]["n_iter"] <= 3
    assert set(report["busy_threads_cpu_s"]) == {"jax_lloyd_chunk64", "jax_lloyd_chunk256", "sklearn"}



def test_kmeans_profile_xla_option_reaches_the_compiler(tmp_path):
    from bench import kmeans_profile

    shape = ["--n", "300", "--d", "8", "--k", "6", "--iters", "2", "--components", "3", "--chunk-sizes", "64",
             "--repeats", "1", "--out", str(tmp_path / "p.json")]
    option = "xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"
    report = kmeans_profile.main(shape + ["--xla-option", option])
    assert report["config"]["xla_options"] == {"xla_cpu_experimental_ynn_fusion_type":
                                               "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"}
    assert report["per_chunk_size"]["64"]["labels_equal_first_chunk_size"] is True
    # an invalid value fails at compilation: the option is really passed to XLA, not dropped
    with pytest.raises(Exception, match="not a valid enum value"):
        kmeans_profile.main(shape + ["--xla-option", "xla_cpu_experimental_ynn_fusion_type=dot"])
    with pytest.raises(SystemExit) as exc:
        kmeans_profile.main(shape + ["--xla-option", "no-equals-sign"])
    assert exc.value.code == 2

@pytest.mark.slow
def test_scaleout_kmeans_pinned_to_one_core_per_device(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scaleout_bench.py"), "--workloads", "kmeans",
                           "--devices", "1", "2", "--repeats", "1", "--kmeans-n", "1001", "--kmeans-k", "9",
                           "--kmeans-iters", "3", "--dim", "16", "--pin-cores", "--out", str(tmp_path / "so.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert json.loads((tmp_path / "so.json").read_text()) == report
    assert report["settings"]["pin_cores"] is True
    runs = report["workloads"]["kmeans"]["runs"]
    assert runs["1"][0]["n_devices"] == 1 and runs["2"][0]["n_devices"] == 2
    assert runs["1"][0]["labels_digest"] == runs["2"][0]["labels_digest"]
    for run in (runs["1"][0], runs["2"][0]):
        assert all(seconds > 0.05 and isinstance(name, str) for seconds, name in run["busy_threads_cpu_s"])
