"""A clean venv with `pip install .` and no extras: the in-process path works; GraphML export
and a Ray run each end in one line naming the extra to install (exit 2)."""

import json
import shutil
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_install_runs_in_process_and_names_the_extras(tmp_path, takes_long):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    src = tmp_path / "src"  # a copy: an in-tree build would leave build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("treesearch", "actors"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    ts = env_dir / "bin" / "treesearch"
    for module in ("ray", "networkx", "vllm", "torch"):  # only the core dependencies came
        probe = subprocess.run([str(py), "-c", f"import {module}"], capture_output=True, cwd=tmp_path)
        assert probe.returncode != 0, module
    config = ROOT / "configs" / "game24-beam.yaml"
    out = tmp_path / "run"
    args = [str(ts), "run", str(config), "--in-process", "--quiet", "--limit", "3", "--out", str(out)]
    run = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["n_problems"] == 3

    graphml = subprocess.run([str(ts), "export", str(out), "--format", "graphml", "-o", str(tmp_path / "g")],
                             capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert graphml.returncode == 2 and graphml.stderr.strip().splitlines() == [
        "error: GraphML export needs networkx: pip install 'treesearch[export]' (also in [ray] and [vllm])"
    ]
    ray_run = subprocess.run([str(ts), "run", str(config), "--limit", "1", "--out", str(tmp_path / "r")],
                             capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert ray_run.returncode == 2 and ray_run.stderr.strip().splitlines() == [
        "error: Ray is not installed (ray): install treesearch[ray] or pass --in-process"
    ]
    # the run above used the installed copy, not this checkout
    where = subprocess.run([str(py), "-c", "import treesearch; print(treesearch.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
