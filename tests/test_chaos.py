"""The chaos benchmark's smoke (its own file: the suite's longest test, so pytest-xdist can run
it beside the rest of the benchmarks' smokes)."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    assert r["answered"] == r["unique"] == r["problems"] == 64 and r["failed"] == 0 and r["broken"] == []
    assert proc.stdout.strip().splitlines()[-1].startswith("ratio:")
    # the driver's stderr tells of the killed replicas in one line of ours each, not Ray's paragraph
    log = (tmp_path / "w" / "chaos.log").read_text().splitlines()
    told = [x for x in log if re.match(r"(generator|PRM) replica \d (down|not answering|died)", x)]
    assert len(told) >= 3, log
    assert not any("worker died" in x.lower() or "raylet" in x.lower() for x in log), log


def test_replica_faults_are_paced_by_progress_and_all_due_before_the_last_quarter():
    """The fault loop's pacing: the first fault at once, the k-th of n once 3/4 * k/n of the
    problems are written, so a fast run cannot end before its faults are due."""
    from benchmarks.chaos import replica_fault_due

    n, problems = 7, 64
    due = [[w for w in range(problems + 1) if replica_fault_due(k, n, w, problems)] for k in range(n)]
    first_due = [d[0] for d in due]
    assert first_due[0] == 0
    assert first_due == sorted(first_due) and len(set(first_due)) == n
    assert first_due[-1] <= 0.75 * problems
    assert not replica_fault_due(n - 1, n, first_due[-1] - 1, problems)
