"""Every benchmark's fast smoke mode runs and prints its ratio line (speed is not asserted:
figures live in benchmarks/README.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name",
    [
        "tree_store",
        "hot_path",
        "dispatch_overhead",
        "async_vs_lockstep",
        "cluster_sim",
        "workers",
        "viewer_render",
        "prefix_reuse",
        "train_step",
    ],
)
def test_benchmark_smoke(name):
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
