"""The wheel, installed outside the clone, runs a packaged recipe by name.

The wheel is built from the checkout's files (tracked and new, not ignored) copied to a temp dir, and
installed with --no-deps into a fresh venv. That venv does not see the clone: its only link to this
environment is a .pth line naming the dev venv's site-packages (the dependencies: torch, TRL, ...). A
plain path in a .pth is added to sys.path but the .pth files inside it are not run, so the dev venv's
editable install of compass (its own .pth naming src/) stays out. The test checks that `compass` comes
from the new venv before running anything."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def checkout_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = checkout_copy(tmp / "src")
    dist = tmp / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = dist.glob("compass_vlm-*.whl")
    return found


def test_wheel_ships_recipes_launch_configs_font_and_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("compass/recipes/tiny.yaml", "compass/recipes/compass-phase2.yaml",
                     "compass/recipes/longdoc-internalized.yaml", "compass/recipes/configs/accelerate/zero3.yaml",
                     "compass/recipes/configs/accelerate/ddp.yaml", "compass/ledger/vendor/plotly-basic.min.js"):
        assert expected in names, expected
    assert any(n.startswith("compass/longdoc/fonts/") for n in names)
    assert any(n.endswith("licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), sorted(n for n in names if "dist-info" in n)
    assert not any(n.startswith(("tests/", "support/")) for n in names)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = Path(subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip from the dev venv installs into the new one (--prefix would skip its entry point shebang)
    done = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def outside_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(COMPASS_HOME=str(home / "ledger"), HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


@pytest.mark.slow
def test_installed_wheel_runs_tiny_by_name_outside_the_clone(venv, tmp_path):
    env = outside_env(tmp_path)
    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import compass, sys; print(compass.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT), where

    listed = subprocess.run([str(venv / "bin" / "compass"), "recipes"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    listed_names = [line.split()[0] for line in listed.stdout.splitlines() if " stages " in line]
    assert {"compass-phase2", "longdoc-internalized", "tiny"} <= set(listed_names), listed.stdout

    copied = subprocess.run([str(venv / "bin" / "compass"), "recipes", "copy", "compass-phase2", "mine"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=120)
    assert copied.returncode == 0, copied.stderr[-2000:]
    assert (tmp_path / "mine" / "compass-phase2.yaml").is_file() and (tmp_path / "mine" / "configs/accelerate/zero3.yaml").is_file()

    done = subprocess.run([str(venv / "bin" / "compass"), "run", "tiny", "--workdir", "work"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert (tmp_path / "work" / "eval_doc" / "manifest.json").is_file()
    assert "eval_doc: done in" in done.stdout
