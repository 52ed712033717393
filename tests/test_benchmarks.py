"""Every benchmark's fast smoke mode runs and prints its ratio line (speed is not asserted:
figures live in benchmarks/README.md)."""

import json
import re
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


def test_chaos_smoke_loses_nothing_under_kills_a_hang_and_a_driver_kill(tmp_path, uses_ray):
    """The chaos benchmark on deterministic backends: replica SIGKILLs, one SIGSTOP hang cleared
    by the request deadline, one driver SIGKILL + resume; each problem answered exactly once and
    the results and ledgers identical to the undisturbed run (the benchmark checks them: exit 0)."""
    report = tmp_path / "chaos.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.chaos",
            "--smoke",
            "--out",
            str(tmp_path / "w"),
            "--json",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["faults"] >= 8 and r["hangs"] == 1 and r["driver_kills"] == 1 and r["replica_kills"] >= 6
    assert r["hang_cleared_s"] is not None
    assert r["answered"] == r["unique"] == r["problems"] == 40 and r["failed"] == 0 and r["broken"] == []
    assert proc.stdout.strip().splitlines()[-1].startswith("ratio:")
    # the driver's stderr tells of the killed replicas in one line of ours each, not Ray's paragraph
    log = (tmp_path / "w" / "chaos.log").read_text().splitlines()
    told = [x for x in log if re.match(r"(generator|PRM) replica \d (down|not answering|died)", x)]
    assert len(told) >= 3, log
    assert not any("worker died" in x.lower() or "raylet" in x.lower() for x in log), log
