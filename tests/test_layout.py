"""Source layout: the top-level kernels/ folder (installed as ``shed_jax.kernels``) must not shadow an installed
package named ``kernels`` (Hugging Face's, which transformers >= 5.25 imports) when the repository root is on
sys.path, as it is under ``python -m pytest``, ``python -m bench`` and ``PYTHONPATH=.``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(code: str, extra_path: Path) -> subprocess.CompletedProcess:
    """``python -c code`` with the repository root first on sys.path (cwd, as ``python -m``) and extra_path
    after it (where a site-packages directory would be)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(extra_path)])}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_an_installed_kernels_package_wins_over_the_checkout_folder(tmp_path):
    site = tmp_path / "site"
    (site / "kernels" / "layer").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("CUDAProperties = 'installed'\n")
    (site / "kernels" / "layer" / "__init__.py").write_text("")
    (site / "kernels" / "layer" / "mode.py").write_text("Mode = 'installed mode'\n")
    code = ("import kernels; from kernels import CUDAProperties; from kernels.layer.mode import Mode; "
            "print(CUDAProperties, '|', Mode, '|', kernels.__file__)")
    done = _run_from_root(code, site)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(" | ")[:2] == ["installed", "installed mode"]
    assert Path(done.stdout.split(" | ")[2].strip()) == site / "kernels" / "__init__.py"


def test_shed_jax_kernels_imports_the_checkout_folder_next_to_an_installed_kernels_package(tmp_path):
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("")
    done = _run_from_root("import shed_jax.kernels.kmeans as k; print(k.__file__); print(callable(k.assign))", site)
    assert done.returncode == 0, done.stderr[-2000:]
    path, ok = done.stdout.split()
    assert Path(path).resolve() == (ROOT / "kernels" / "kmeans.py").resolve() and ok == "True"


def test_the_kernels_folder_is_not_a_regular_package_and_the_source_link_is_in_place():
    # A kernels/__init__.py would make the folder a regular package, which wins over any later sys.path entry.
    assert not (ROOT / "kernels" / "__init__.py").exists()
    link = ROOT / "shed_jax" / "kernels"
    assert link.is_symlink() and os.readlink(link) == "../kernels"
