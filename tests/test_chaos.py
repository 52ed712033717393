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


def test_replica_faults_split_around_the_driver_kill_with_the_hang_first_after_it():
    """The fault loop's schedule: at most round(n * kill_at) replica SIGKILLs before the driver
    kill, none while it has not come; after it the one hang, then SIGKILLs until n are in."""
    import signal

    from benchmarks.chaos import next_replica_fault

    def schedule(n: int, kill_at: float, killed_after: int) -> list[str]:
        done, hung, out = 0, False, []
        for round_ in range(4 * n):
            killed = round_ >= killed_after
            sig = next_replica_fault(done, n, killed, hung, kill_at)
            out.append({None: ".", signal.SIGKILL: "K", signal.SIGSTOP: "H"}[sig])
            done += sig is not None
            hung |= sig == signal.SIGSTOP
        return out

    smoke = schedule(7, 0.33, killed_after=5)  # the driver killed in round 5
    assert "".join(smoke[:5]) == "KK..." and "".join(smoke[5:10]) == "HKKKK" and set(smoke[10:]) == {"."}
    real = schedule(19, 0.5, killed_after=3)  # results came fast: the driver killed early
    assert real[:3] == ["K"] * 3 and real[3] == "H" and real.count("K") == 18 and real.count("H") == 1
