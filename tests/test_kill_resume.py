"""Kill tests (issue 10): `shed refine` / `shed value` killed (SIGKILL) or interrupted (SIGINT) at named points,
then `--resume`: the outputs equal, byte for byte, those of an uninterrupted run with the same seed, and no output
is ever half-written.

The points are hit deterministically through the testing hook ``SHED_FAULT=POINT[:WHICH]:ACTION``
(:mod:`shed_jax._faults`). SIGKILL runs the command in a subprocess (a small driver that swaps the sentence
encoder for the hashing stand-in of conftest.py, then calls the real CLI); SIGINT runs in-process (CliRunner;
the hook sends the signal to this process, which is what Ctrl-C does). Resumes run in-process.

Compared byte for byte: OUT.jsonl, OUT.scores.jsonl, values.json, selection.json, scores.jsonl, clusters.npz,
convergence.npz. summary.json holds wall-clock seconds and which stages were computed or skipped (some are, on a
resume), and absolute paths: it is compared with those keys removed and the directory replaced by a placeholder.

The default suite runs a representative subset (SIGKILL mid valuation, SIGKILL between the two output files,
SIGINT after k-means; a full disk for the output, injected and, where mounting is allowed, real; a read-only
output directory); the full matrix is marked slow.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import _helpers as helpers
from _helpers import hashing_encoder, invoke
from shed_jax.demo import synthetic

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ["out.jsonl", "out.scores.jsonl", "run/values.json", "run/selection.json", "run/scores.jsonl",
            "run/clusters.npz", "run/convergence.npz"]
VOLATILE = {"seconds", "seconds_total", "skipped", "stages"}  # run history, not results

DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from conftest import hashing_embed
    from shed_jax import embed
    embed._get_model = lambda *args, **kwargs: None
    embed._encode = lambda encoder, texts, **kwargs: hashing_embed(list(texts))
    from shed_jax.cli import main
    main(sys.argv[2:])
""")


def refine_argv(work: Path) -> list[str]:
    # 48 permutations in chunks of 16 (batch size 5, 5 coalitions per permutation): 3 chunks, 2 checkpoints
    return ["refine", str(work / "data" / "train.jsonl"), "--valid", str(work / "data" / "valid.jsonl"),
            "--ratio", "0.2", "-o", str(work / "out.jsonl"), "--run-dir", str(work / "run"), "--clusters", "6",
            "--permutations", "48", "--shapley-batch-size", "5", "--proxies-per-cluster", "1", "-q"]


def value_argv(work: Path, permutations: int = 48, **options) -> list[str]:
    options = {"shapley_batch_size": 5, "proxies_per_cluster": 1, **options}
    return helpers.value_argv(work / "run", work / "data" / "valid.jsonl", permutations, **options)


def cluster_argv(work: Path) -> list[str]:
    return helpers.cluster_argv(work / "data" / "train.jsonl", work / "run", 6)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_data")
    synthetic.make_demo(root, n_examples=120, n_topics=6, n_validation=30, seed=0)
    return root


def new_work(tmp_path, data, name="work") -> Path:
    work = tmp_path / name
    work.mkdir()
    shutil.copytree(data, work / "data")
    return work


def normalised_summary(work: Path):
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj.replace(str(work), "<work>") if isinstance(obj, str) else obj
    return strip(json.loads((work / "run" / "summary.json").read_text()))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run: the bytes of every compared output, and the normalised summary."""
    work = tmp_path_factory.mktemp("kill_reference")
    shutil.copytree(data, work / "data")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
        hashing_encoder(monkeypatch)
        result = invoke(refine_argv(work), monkeypatch)
    assert result.exit_code == 0, result.output
    return {name: (work / name).read_bytes() for name in COMPARED}, normalised_summary(work)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent JAX compilation cache shared by the subprocesses of this module (the later ones compile less)."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def run_killed(argv, work: Path, fault: str, compilation_cache: str):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", SHED_FAULT=fault,
               SHED_CACHE=str(work / "cache"), JAX_COMPILATION_CACHE_DIR=compilation_cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "tests"), *argv], env=env,
                          capture_output=True, text=True, timeout=600)


def assert_nothing_half_written(work: Path, reference_bytes):
    """Every output that exists after the kill is complete: byte-equal to the uninterrupted run's. Only hidden
    temporary files of the atomic writer (``.NAME.XXXX.tmp``) may be left over."""
    for name in COMPARED:
        path = work / name
        if path.exists():
            assert path.read_bytes() == reference_bytes[name], f"{name} exists but differs after the fault"
    for path in list(work.glob("*")) + list((work / "run").glob("*")):
        assert not path.name.endswith(".tmp") or path.name.startswith("."), path


def resume_and_compare(work: Path, monkeypatch, reference, argv=None):
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    argv = argv or ["refine", "--resume", "--run-dir", str(work / "run"), "-q"]
    result = invoke(argv, monkeypatch)
    assert result.exit_code == 0, result.output
    reference_bytes, reference_summary = reference
    for name in COMPARED:
        assert (work / name).read_bytes() == reference_bytes[name], f"{name} differs from the uninterrupted run"
    assert normalised_summary(work) == reference_summary
    assert not (work / "run" / ".lock").exists()
    leftovers = [p.name for p in list(work.glob(".*")) + list((work / "run").glob(".*"))]
    assert leftovers == [], leftovers  # a killed writer's temporary files are removed when the target is rewritten


def checkpoint_entries(work: Path) -> list[str]:
    ckpt = work / "run" / "shapley_ckpt"
    return sorted(p.name for p in ckpt.iterdir()) if ckpt.exists() else []


KILL_POINTS = [
    pytest.param("value_chunk:2", id="mid-valuation"),
    pytest.param("write:out.jsonl", id="output-temporaries-written", marks=pytest.mark.slow),
    pytest.param("replace:out.jsonl", id="between-the-two-output-files"),
    pytest.param("embed", id="after-embedding", marks=pytest.mark.slow),
    pytest.param("kmeans", id="after-kmeans", marks=pytest.mark.slow),
    pytest.param("checkpoint_write:2", id="inside-a-checkpoint-write", marks=pytest.mark.slow),
    pytest.param("replace:values.json", id="after-values-json", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_resume_gives_the_uninterrupted_outputs(point, data, reference, tmp_path, monkeypatch,
                                                            compilation_cache):
    work = new_work(tmp_path, data)
    killed = run_killed(refine_argv(work), work, f"{point}:kill", compilation_cache)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert_nothing_half_written(work, reference[0])
    if point == "value_chunk:2":
        assert checkpoint_entries(work) == ["16"]  # chunk 1 saved; chunk 2 was killed before its checkpoint
    if point == "checkpoint_write:2":
        entries = checkpoint_entries(work)
        assert "16" in entries and "32" not in entries and any(not e.isdigit() for e in entries), entries
    if point == "replace:out.jsonl":
        assert (work / "out.jsonl").exists() and not (work / "out.scores.jsonl").exists()
    resume_and_compare(work, monkeypatch, reference)


INT_POINTS = [
    pytest.param("kmeans", id="after-kmeans"),
    pytest.param("embed", id="after-embedding", marks=pytest.mark.slow),
    pytest.param("value_chunk:2", id="mid-valuation", marks=pytest.mark.slow),
    pytest.param("checkpoint_write:2", id="inside-a-checkpoint-write", marks=pytest.mark.slow),
    pytest.param("replace:out.jsonl", id="between-the-two-output-files", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("point", INT_POINTS)
def test_ctrl_c_then_resume_gives_the_uninterrupted_outputs(point, data, reference, tmp_path, monkeypatch):
    work = new_work(tmp_path, data)
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    result = invoke(refine_argv(work), monkeypatch, fault=f"{point}:int")
    assert result.exit_code == 130, result.output
    assert "resume with: shed refine --resume --run-dir" in result.stderr
    assert not (work / "run" / ".lock").exists()
    assert_nothing_half_written(work, reference[0])
    if point == "checkpoint_write:2":
        assert "32" in checkpoint_entries(work)  # Ctrl-C is held back until the step being written is complete
    resume_and_compare(work, monkeypatch, reference)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["value_chunk:2:kill", "checkpoint_write:2:kill", "value_chunk:2:int"])
def test_shed_value_killed_then_resumed(fault, data, reference, tmp_path, monkeypatch, compilation_cache):
    """`shed cluster` then `shed value` killed/interrupted, `shed value --resume`, then `shed select`: the same values
    and selection as the uninterrupted refine."""
    work = new_work(tmp_path, data)
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    assert invoke(cluster_argv(work), monkeypatch).exit_code == 0
    if fault.endswith(":kill"):
        killed = run_killed(value_argv(work), work, fault, compilation_cache)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    else:
        result = invoke(value_argv(work), monkeypatch, fault=fault)
        assert result.exit_code == 130, result.output
    assert not (work / "run" / "values.json").exists()
    result = invoke(value_argv(work) + ["--resume"], monkeypatch)
    assert result.exit_code == 0, result.output
    for name in ("run/values.json", "run/convergence.npz"):
        assert (work / name).read_bytes() == reference[0][name], name


# ------------------------------------------------------------------------------------------------------
# disk full and read-only output directories
# ------------------------------------------------------------------------------------------------------
def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_disk_full_writing_the_output_keeps_the_previous_output_and_resume_works(data, reference, tmp_path,
                                                                                 monkeypatch):
    """ENOSPC injected into the atomic writer as OUT.jsonl is written (runs everywhere): exit 1 with one line,
    the previous OUT.jsonl untouched, no temporary file left; with space back, --resume finishes exactly."""
    work = new_work(tmp_path, data)
    (work / "out.jsonl").write_text("the previous output\n")
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    result = invoke(refine_argv(work), monkeypatch, fault="write:out.jsonl:enospc")
    assert result.exit_code == 1
    line = one_line(result)
    assert "No space left on device" in line and "out.jsonl" in line and "resume with: shed refine --resume" in line
    assert (work / "out.jsonl").read_text() == "the previous output\n"
    assert not (work / "out.scores.jsonl").exists() and not list(work.glob(".*.tmp"))
    assert (work / "run" / "values.json").read_bytes() == reference[0]["run/values.json"]  # finished stages kept
    resume_and_compare(work, monkeypatch, reference)


@pytest.mark.slow  # the output case above runs in the default suite
def test_disk_full_writing_a_checkpoint_keeps_the_previous_one_and_resume_works(data, reference, tmp_path,
                                                                                monkeypatch):
    from shed_jax.run.value import checkpointed_samples

    work = new_work(tmp_path, data)
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    result = invoke(refine_argv(work), monkeypatch, fault="checkpoint_save:2:enospc")
    assert result.exit_code == 1 and "No space left on device" in one_line(result)
    assert checkpointed_samples(work / "run" / "shapley_ckpt") == 16  # the previous step, intact
    assert not (work / "run" / "values.json").exists() and not (work / "out.jsonl").exists()
    resume_and_compare(work, monkeypatch, reference)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs mounted for the test (needs the privilege to mount; skipped with the reason otherwise)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}); the injected "
                    f"ENOSPC tests above cover the same code")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_really_full_disk_for_the_output(data, reference, tmp_path, monkeypatch, small_tmpfs):
    work = new_work(tmp_path, data)
    filler = small_tmpfs / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the file system to the last byte
        for size in (4096, 1):
            try:
                while True:
                    os.write(descriptor, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(descriptor)
    argv = refine_argv(work)
    argv[argv.index("-o") + 1] = str(small_tmpfs / "out.jsonl")
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    result = invoke(argv, monkeypatch)
    assert result.exit_code == 1 and "No space left on device" in one_line(result), result.output
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]  # no output, no temporary file
    filler.unlink()
    result = invoke(["refine", "--resume", "--run-dir", str(work / "run"), "-q"], monkeypatch)
    assert result.exit_code == 0, result.output
    assert (small_tmpfs / "out.jsonl").read_bytes() == reference[0]["out.jsonl"]
    assert (small_tmpfs / "out.scores.jsonl").read_bytes() == reference[0]["out.scores.jsonl"]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write to: a read-only tmpfs when mounting is allowed (root ignores file
    permissions but not a read-only mount), else a chmod 555 directory when not running as root."""
    directory = tmp_path / "readonly"
    directory.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode == 0:
        try:
            yield directory
        finally:
            subprocess.run(["umount", str(directory)], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip("running as root without the privilege to mount: no directory is read-only to root")
    directory.chmod(0o555)
    try:
        yield directory
    finally:
        directory.chmod(0o755)


def test_a_read_only_output_directory_is_refused_before_any_work(data, tmp_path, monkeypatch, read_only_dir):
    work = new_work(tmp_path, data)
    argv = refine_argv(work)
    argv[argv.index("-o") + 1] = str(read_only_dir / "out.jsonl")
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    result = invoke(argv, monkeypatch)
    assert result.exit_code == 2
    assert "readonly: output directory is not writable" in one_line(result)
    assert not (work / "run").exists() and not (work / "cache").exists() and list(read_only_dir.iterdir()) == []


@pytest.mark.slow  # the same path as the injected ENOSPC on the output (default suite)
def test_a_file_system_turning_read_only_keeps_the_run_and_resume_works(data, reference, tmp_path, monkeypatch):
    """EROFS injected as the selection is written (the directory passed the check, then became read-only)."""
    work = new_work(tmp_path, data)
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    hashing_encoder(monkeypatch)
    result = invoke(refine_argv(work), monkeypatch, fault="write:out.jsonl:erofs")
    assert result.exit_code == 1 and "Read-only file system" in one_line(result)
    assert not (work / "out.jsonl").exists() and not list(work.glob(".*.tmp"))
    resume_and_compare(work, monkeypatch, reference)


def test_a_killed_writers_temporary_files_are_removed_by_the_next_write(tmp_path):
    from shed_jax import io as shed_io

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(child.stdout), os.getppid()
    target = tmp_path / "out.jsonl"
    stale = tmp_path / (shed_io._temp_prefix(str(target), dead) + "abcd1234.tmp")
    live = tmp_path / (shed_io._temp_prefix(str(target), alive) + "abcd1234.tmp")
    other = tmp_path / (shed_io._temp_prefix(str(tmp_path / "other.json"), dead) + "abcd1234.tmp")
    for path in (stale, live, other):
        path.write_text("partial")
    shed_io.atomic_write_text(target, "complete\n")
    assert target.read_text() == "complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "out.jsonl"])


@pytest.mark.slow
def test_default_auto_valuation_killed_then_resumed(data, tmp_path, monkeypatch, compilation_cache):
    """The default M (`auto`: 16 players per cluster here) killed mid-valuation and resumed: the values of an
    uninterrupted run, byte for byte."""
    monkeypatch.setenv("SHED_CACHE", str(tmp_path / "cache"))
    hashing_encoder(monkeypatch)

    def auto_value_argv(work):
        return value_argv(work, 8, proxies_per_cluster=None)

    reference_work = new_work(tmp_path, data, "reference")
    assert invoke(cluster_argv(reference_work), monkeypatch).exit_code == 0
    assert invoke(auto_value_argv(reference_work), monkeypatch).exit_code == 0
    expected = (reference_work / "run" / "values.json").read_bytes()
    assert json.loads(expected)["proxies_per_cluster"] > 1  # auto chose several players per cluster

    work = new_work(tmp_path, data)
    monkeypatch.setenv("SHED_CACHE", str(work / "cache"))
    assert invoke(cluster_argv(work), monkeypatch).exit_code == 0
    killed = run_killed(auto_value_argv(work), work, "value_chunk:2:kill", compilation_cache)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (work / "run" / "values.json").exists() and checkpoint_entries(work)
    refused = invoke(auto_value_argv(work), monkeypatch)
    assert refused.exit_code == 2 and "--resume continues it" in refused.stderr, refused.output
    result = invoke(auto_value_argv(work) + ["--resume"], monkeypatch)
    assert result.exit_code == 0, result.output
    assert (work / "run" / "values.json").read_bytes() == expected
