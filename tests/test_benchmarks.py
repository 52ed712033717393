"""Every benchmark's fast smoke mode runs and prints its ratio line (speed is not asserted:
figures live in benchmarks/README.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _smoke(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 3 and lines[-1].startswith("ratio:"), proc.stdout


@pytest.mark.parametrize("name", ["tree_store", "train_step", "first_step_heads"])
def test_benchmark_smoke(name, takes_long):
    _smoke(name)


ON_RAY = [
    "hot_path",
    "dispatch_overhead",
    "async_vs_lockstep",
    "stragglers",
    "cluster_sim",
    "workers",
    "long_job",
]
# serve_load's smoke runs in tests/test_service.py, against the module's `treesearch serve`


@pytest.mark.parametrize("name", ON_RAY)
def test_benchmark_smoke_on_ray(name, uses_ray):
    _smoke(name)


def test_benchmark_smoke_with_vllm(uses_vllm):
    _smoke("prefix_reuse")


def test_benchmark_smoke_in_chromium(uses_browser):
    _smoke("viewer_render")


def test_gpu_check_dry_run_plans_the_main_job_on_one_gpu(takes_long):
    """The GPU check needs a CUDA machine; without one its dry run resolves the config and the
    placement plan (both pools at half of GPU 0)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--gpus", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert "generator 0: node0: GPU 0 x 0.5" in out and "prm 0: node0: GPU 0 x 0.5" in out
    assert out[-1].startswith("ratio: dry run: 2 replicas planned on 1 GPU")
