"""Live progress: window rates (not totals over elapsed time), ETA, plain periodic lines when
not a terminal, status.json and `treesearch status --run-dir`."""

import io
import json
import re
import subprocess
import sys

from treesearch.cli import main
from treesearch.progress import STALE_S, WINDOW_S, Progress, watch

from .conftest import math_overrides
from .helpers import slow_run
from .test_cli import CONFIGS


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _row(correct=True, tokens=100, status="ok"):
    ledger = {"policy_generated_tokens": tokens, "prm_tokens": 2 * tokens, "policy_prompt_tokens": 400,
              "policy_cached_prompt_tokens": 300}  # fmt: skip
    return {"status": status, "correct": correct, "covered": True, "ledger": ledger}


def test_rates_are_over_the_recent_window_and_the_eta_follows_them(tmp_path):
    clock, stream = Clock(), io.StringIO()
    p = Progress(100, stream=stream, status_path=tmp_path / "status.json", clock=clock)
    assert p.figures()["eta_s"] is None  # nothing finished: no rate, no ETA
    for i in range(40):  # one problem a second, 100 tokens each, for 40 s
        clock.t = i + 1.0
        p.update(_row(correct=i % 4 != 0))
    f = p.figures()
    assert abs(f["generated_tokens_per_s"] - 100.0) < 1e-6 and abs(f["prm_tokens_per_s"] - 200.0) < 1e-6
    assert abs(f["eta_s"] - 60.0) < 1e-6 and f["accuracy"] == 0.75 and f["prefix_cache_hit_rate"] == 0.75
    for i in range(40, 50):  # then ten problems in the next 100 s: the rate falls with them
        clock.t = 40.0 + (i - 39) * 10.0
        p.update(_row())
    f = p.figures()
    assert len(p.window) == 7 and abs(f["problems_per_s"] - 7 / WINDOW_S) < 1e-9  # 80..140 s, not 50 / 140 s
    assert abs(f["eta_s"] - 50 / (7 / WINDOW_S)) < 1e-6
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "running" and status["done"] == 50 and status["total"] == 100


def test_plain_lines_come_every_ten_seconds_and_at_the_end_when_not_a_terminal(tmp_path):
    clock, stream = Clock(), io.StringIO()
    p = Progress(30, stream=stream, status_path=tmp_path / "status.json", clock=clock)
    for i in range(30):
        clock.t = i + 1.0
        p.update(_row(status="failed" if i == 3 else "ok"))
    lines = stream.getvalue().splitlines()
    assert [x.split()[0] for x in lines] == ["0/30", "10/30", "20/30", "30/30"]  # at 0, 10, 20 s, the end
    assert lines[0].endswith("ETA ?")  # nothing finished yet: no rate to divide by
    assert lines[-1].startswith("30/30  1 failed  accuracy 100.0%  coverage 100.0%  100 gen tok/s")
    assert lines[-1].endswith("ETA 0:00") and "\r" not in stream.getvalue()
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "finished"


def test_status_of_a_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "run",
        str(CONFIGS / "game24-beam.yaml"),
        "--in-process",
        "--quiet",
        "--limit",
        "5",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["status", "--run-dir", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("finished: 5/5  accuracy ") and "ETA 0:00" in line
    assert main(["status", "--run-dir", str(tmp_path)]) == 2
    assert "no status.json" in capsys.readouterr().err
    assert main(["status"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: status: give JOB --address URL")


def test_a_vllm_run_says_its_start_and_progress_and_nothing_of_vllm(tmp_path, models, dataset, uses_vllm):
    """A job on the real stack through the CLI (a local Ray, a vLLM generator actor, a
    Math-Shepherd PRM actor; the math task on tiny models): stderr has our start-up lines and
    progress lines and none of vLLM's, Triton's or Ray's own (those stay in the session logs it
    names), and the math job's summary is right."""
    policy, _, shepherd = models
    sets = [x for o in math_overrides(models, dataset, prm="math_shepherd") for x in ("--set", o)]
    job = tmp_path / "job.yaml"
    job.write_text("algorithm: {name: beam, width: 2, expansions: 2}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "treesearch.cli", "run", str(job), *sets, "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert err[0].startswith("replica logs (vLLM and others): ") and err[0].endswith(
        "(--verbose shows them here)"
    )
    assert f"generator: starting 1 replica(s) (vllm, {policy})" in err
    assert f"PRM: starting 1 replica(s) (math_shepherd, {shepherd})" in err
    ready = [x for x in err if " ready in " in x]
    assert sorted(x.split(" ready in ")[0] for x in ready) == [
        f"PRM 1/1 (math_shepherd, {shepherd})",
        f"generator 1/1 (vllm, {policy})",
    ]
    progress = [x for x in err if x.split("  ")[0].endswith("/3")]
    assert progress[0].startswith("0/3  accuracy -") and progress[-1].startswith("3/3  accuracy ")
    ours = [err[0], *(x for x in err if x.split(":")[0] in ("generator", "PRM")), *ready, *progress]
    # nothing else: no vLLM, Triton or Ray Python-side lines; Ray's C++ core worker logs one line
    # of its own (search workers' constructor arguments live in the object store) at ERROR level
    assert all("core_worker.cc" in x for x in err if x not in ours), err
    assert not any("vllm" in x.lower() or "triton" in x.lower() for x in err if x not in ours), err
    assert "accuracy" in proc.stdout and "output:" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "math" and summary["n_problems"] == 3 and summary["ledger"]["prm_calls"] > 0


LOAD = {
    "generator": [
        {"replica": 0, "state": "up", "busy": 0.9, "queue": 12, "requests": 4210},
        {"replica": 1, "state": "up", "busy": 0.5, "queue": 3, "requests": 2000},
        {"replica": 2, "state": "down"},
    ],
    "PRM": [{"replica": 0, "state": "up", "busy": None, "queue": 0, "requests": 0}],
}


def test_replica_load_reaches_the_line_and_status(tmp_path, capsys):
    stream = io.StringIO()
    Progress(10, stream=stream, status_path=tmp_path / "status.json", clock=Clock(), load=lambda: LOAD)
    # the pool's mean over replicas that are up and have a figure; "-" when none has one yet
    assert "  generator busy 70%  PRM busy -  ETA ?" in stream.getvalue()
    assert main(["status", "--run-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("running: 0/10  accuracy -") and "generator busy 70%" in lines[0]
    assert lines[1:] == [
        "  generator 0: up, busy 90%, queue 12, 4,210 requests",
        "  generator 1: up, busy 50%, queue 3, 2,000 requests",
        "  generator 2: down",
        "  PRM 0: up, busy -, queue 0, 0 requests",
    ]


def test_a_status_no_longer_rewritten_reads_stopped_and_ends_a_watch(tmp_path, capsys):
    Progress(10, stream=None, status_path=tmp_path / "status.json", clock=Clock())
    status = json.loads((tmp_path / "status.json").read_text())
    status["updated_unix"] -= STALE_S + 5  # the run was killed: nobody rewrites it
    (tmp_path / "status.json").write_text(json.dumps(status))
    assert main(["watch", "--run-dir", str(tmp_path), "--every", "0.1"]) == 0  # returns at once
    out = capsys.readouterr().out
    assert out.startswith("stopped: 0/10") and "the run has stopped" in out and out.count("stopped:") == 1


def test_watch_redraws_until_the_job_ends():
    frames = iter([("running: 1/3", False), ("running: 2/3", False), ("finished: 3/3", True)])
    stream, slept = io.StringIO(), []
    watch(lambda: next(frames), 5.0, stream, sleep=slept.append)
    assert stream.getvalue().split("\n\n")[:3] == ["running: 1/3", "running: 2/3", "finished: 3/3"]
    assert slept == [5.0, 5.0]


def test_watch_and_results_of_a_local_run_while_it_runs(tmp_path, takes_long):
    """A slow in-process run in another process: `watch --run-dir` shows it moving and ends by
    itself when it finishes; `results --run-dir` mid-run is a partial summary, marked; after
    the end, the full one."""
    out = tmp_path / "slow"
    run = slow_run(str(CONFIGS / "game24-beam.yaml"), out, limit=4, latency_s=0.3)
    partial = _cli("results", "--run-dir", str(out))
    assert partial.returncode == 0, partial.stderr
    head = partial.stdout.splitlines()[0]
    assert re.fullmatch(
        r"PARTIAL \(running\): [1-3] of 4 problems finished; the figures are over those only", head
    )
    assert "accuracy" in partial.stdout and "algorithm" in partial.stdout
    watched = _cli("watch", "--run-dir", str(out), "--every", "0.5")  # returns when the run ends
    assert run.wait(timeout=120) == 0 and watched.returncode == 0
    blocks = watched.stdout.strip().split("\n\n")
    assert blocks[-1].startswith("finished: 4/4") and all(
        b.startswith(("running:", "finished:")) for b in blocks
    )
    final = _cli("results", "--run-dir", str(out))
    assert final.stdout.startswith("algorithm") and "PARTIAL" not in final.stdout
    assert "status: finished" in final.stdout


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "treesearch.cli", *args], capture_output=True, text=True,
                          timeout=180)  # fmt: skip
