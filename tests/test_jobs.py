"""Ray Jobs: a real local head (``ray start --head`` on 127.0.0.1 with the job server), a job
submitted with ``treesearch submit``, its logs followed, its results read; ``stop`` stops one.
Also URI outputs (``file://`` through pyarrow) with resume."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_cli import CONFIGS

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "treesearch.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def head(uses_ray):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    port, dash = _free_port(), _free_port()
    # the cluster's interpreter (what `python` means in a job's entrypoint) is this venv's
    env = {**os.environ, "RAY_ADDRESS": "", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # --block in a session of its own: the teardown stops this head alone (`ray stop` would stop
    # every Ray on the machine)
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--disable-usage-stats",
            "--block",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while time.time() < deadline:  # the job server answers once the head is up
        if _cli("status", "no-such-job", "--address", address).returncode == 1:
            break
        time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)


def _wait(address, job, states=("SUCCEEDED", "FAILED", "STOPPED"), timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = _cli("status", job, "--address", address).stdout.strip().split("\n")[0]
        if state in states:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} still {state}")


def test_submit_follow_logs_and_read_the_same_summary_as_a_local_run(head, tmp_path):
    out = tmp_path / "cluster-run"
    sub = _cli(
        "submit",
        str(CONFIGS / "game24-beam.yaml"),
        "--address",
        head,
        "--out",
        str(out),
        "--limit",
        "6",
        "--set",
        "run.ray_num_cpus=null",
    )
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().splitlines()[-1]
    assert job.startswith("treesearch-game24-beam-")
    logs = _cli("logs", job, "--address", head, "--follow")  # returns when the job ends
    assert logs.returncode == 0 and "accuracy" in logs.stdout, logs.stdout[-2000:]
    assert _wait(head, job) == "SUCCEEDED"
    final = _cli("status", job, "--address", head).stdout.strip().splitlines()
    assert final[0] == "SUCCEEDED" and final[1].startswith("finished: 6/6  accuracy "), final
    res = _cli("results", job, "--address", head)
    assert res.returncode == 0 and str(out) in res.stdout and "SUCCEEDED" in res.stdout
    local = tmp_path / "local"
    assert (
        _cli(
            "run",
            str(CONFIGS / "game24-beam.yaml"),
            "--in-process",
            "--quiet",
            "--limit",
            "6",
            "--out",
            str(local),
        ).returncode
        == 0
    )
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, local))
    assert a["accuracy"] == b["accuracy"] and a["n_problems"] == b["n_problems"] == 6
    for k in ("policy_generated_tokens", "prm_tokens", "generator_calls", "nodes"):
        assert a["ledger"][k] == b["ledger"][k]


def test_stop_stops_a_running_job(head, tmp_path):
    sub = _cli(
        "submit",
        str(CONFIGS / "game24-mcts.yaml"),
        "--address",
        head,
        "--out",
        str(tmp_path / "slow"),
        "--set",
        "generator.latency_s=0.5",
    )
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().splitlines()[-1]
    _wait(head, job, states=("RUNNING",))
    deadline = time.time() + 240
    busy = re.compile(r"  generator 0: up, busy (\d+)%, queue \d+, [\d,]+ requests")
    while time.time() < deadline:  # the live figures, read from the job's run dir mid-run
        lines = _cli("status", job, "--address", head).stdout.strip().splitlines()
        if len(lines) > 2 and not lines[1].startswith("running: 0/") and any(busy.match(x) for x in lines):
            break
        time.sleep(1)
    assert lines[0] == "RUNNING" and re.match(r"running: \d+/100  accuracy \d+\.\d%  coverage", lines[1]), (
        lines
    )
    done = int(lines[1].split()[1].split("/")[0])
    assert 0 < done < 100 and "ETA" in lines[1] and "generator busy" in lines[1]
    # each replica's load, measured on the replica (0.5 s per call: the generator is mostly busy)
    assert int(next(busy.match(x) for x in lines if busy.match(x)).group(1)) > 20, lines
    assert any(x.startswith("  PRM 0: up, busy ") for x in lines), lines
    partial = _cli("results", job, "--address", head)
    assert partial.returncode == 0, partial.stderr
    assert re.match(r"PARTIAL \(RUNNING\): \d+ of 100 problems finished; the figures are over those only",
                    partial.stdout), partial.stdout  # fmt: skip
    watcher = subprocess.Popen(
        [sys.executable, "-m", "treesearch.cli", "watch", job, "--address", head, "--every", "1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watcher.stdout.readline().strip() == "RUNNING"  # its first block, before the stop
    stopped = _cli("stop", job, "--address", head)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "STOPPED"
    rest, _ = watcher.communicate(timeout=60)  # the watch ends with the job
    assert watcher.returncode == 0 and rest.strip().split("\n\n")[-1].startswith("STOPPED")
    summary = tmp_path / "slow" / "summary.json"
    assert not summary.exists()  # it did not run to the end


def test_bad_submissions_fail_clearly(head, tmp_path):
    bad = _cli("submit", str(CONFIGS / "game24-beam.yaml"), "--address", head, "--out", "relative/dir")
    assert bad.returncode == 2 and "absolute path" in bad.stderr
    bad = _cli(
        "submit",
        str(CONFIGS / "game24-beam.yaml"),
        "--address",
        head,
        "--out",
        str(tmp_path),
        "--set",
        "algorithm.widht=3",
    )
    assert bad.returncode == 2 and "algorithm.widht: unknown field" in bad.stderr
    unknown = _cli("results", "no-such-job", "--address", head)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error:")


def test_uri_output_round_trip_with_resume(tmp_path, takes_long):
    uri = f"file://{tmp_path / 'bucket' / 'run'}"
    args = ("run", str(CONFIGS / "game24-beam.yaml"), "--in-process", "--quiet", "--out", uri)
    first = _cli(*args, "--limit", "3")
    assert first.returncode == 0, first.stderr
    assert len((tmp_path / "bucket" / "run" / "results.jsonl").read_text().splitlines()) == 3
    again = _cli(*args, "--limit", "3")
    assert again.returncode == 2 and "--resume" in again.stderr  # the staged copy knows the run
    more = _cli(*args, "--limit", "5", "--resume")
    assert more.returncode == 2 and "run.limit" in more.stderr  # a different problem set is refused
