"""Ray Jobs: a real local head started by the README's walk-through line (on 127.0.0.1 with the
job server), without the venv on PATH: ``python`` there is a bare interpreter without
treesearch's dependencies, as on a head started from a system shell. Jobs submitted with
``treesearch submit --python``, their logs followed, their results read; ``stop`` stops one; the
preflight refuses a job the cluster's python cannot run; a job that fails says why. Also URI
outputs (``file://`` through pyarrow) with resume."""

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

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = sys.executable


def walkthrough() -> list[str]:
    """The README's cluster walk-through, line by line."""
    text = (ROOT / "README.md").read_text()
    return (
        text.split("<!-- cluster walk-through -->\n```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "treesearch.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def system_shell(tmp_path_factory) -> dict[str, str]:
    """An environment whose PATH lacks this venv and whose ``python`` has none of treesearch's
    dependencies (a bare venv of the base interpreter)."""
    bare = tmp_path_factory.mktemp("bare")
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(":") if p != venv_bin]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return {**env, "RAY_ADDRESS": "", "PATH": ":".join([str(bare / "bin"), *path])}


@pytest.fixture(scope="module")
def head(uses_ray, system_shell):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    lines = walkthrough()
    assert lines[-1] == ".venv/bin/ray stop" and lines[0].startswith(".venv/bin/ray start --head ")
    port, dash, agent = _free_port(), _free_port(), _free_port()
    start = (
        lines[0]
        .replace("--port 6390", f"--port {port}")
        .replace("--dashboard-port 8265", f"--dashboard-port {dash}")
    ) + f" --dashboard-agent-listen-port {agent}"  # another Ray on this machine holds 52365
    # --block, in a session of its own, in place of the README's last line: the teardown stops
    # this head alone (`ray stop` would stop every Ray on the machine)
    head = subprocess.Popen(
        ["bash", "-c", f"exec {start} --block"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=system_shell,
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


def test_the_readme_walkthrough_runs_as_written(head, system_shell, tmp_path):
    dash = head.rsplit(":", 1)[1]
    out = tmp_path / "sub1"
    script = "\n".join(walkthrough()[1:-1]).replace("8265", dash).replace('"$PWD/runs/sub1"', str(out))
    ran = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        cwd=ROOT,
        env=system_shell,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    # submit echoes what it set, and the preflight found the venv's python
    echo = [x for x in ran.stderr.splitlines() if x.startswith("submit: ")]
    assert len(echo) == 1 and f"{VENV_PYTHON} -m treesearch.cli run job.yaml" in echo[0], ran.stderr
    assert "preflight ok: python 3.11" in echo[0] and "ray 2.60.0" in echo[0]
    assert "\nSUCCEEDED\nfinished: 30/30  accuracy " in ran.stdout  # watch's last block
    results = ran.stdout.split("\nalgorithm ")[-1]  # results' summary table, after watch's blocks
    assert "\nproblems                       30\n" in results and "\naccuracy   " in results, ran.stdout
    assert results.endswith(f"status: SUCCEEDED\nrun dir: {out} (config.yaml, run.json, results.jsonl, "
                            "summary.json, status.json, trees/<id>.msgpack)\n")  # fmt: skip
    # the job's logs, its final status, and the same summary as a local run of the same config
    from actors.jobs import client

    jobs = client(head).list_jobs()
    (job,) = [j.submission_id for j in jobs if (j.metadata or {}).get("treesearch_out") == str(out)]
    logs = _cli("logs", job, "--address", head, "--follow")  # the job has ended: returns at once
    assert logs.returncode == 0 and "accuracy" in logs.stdout, logs.stdout[-2000:]
    final = _cli("status", job, "--address", head).stdout.strip().splitlines()
    assert final[0] == "SUCCEEDED" and final[1].startswith("finished: 30/30  accuracy "), final
    local = tmp_path / "local"
    run = ("run", str(CONFIGS / "game24-beam.yaml"), "--in-process", "--quiet", "--limit", "30")
    assert _cli(*run, "--out", str(local)).returncode == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, local))
    assert a["accuracy"] == b["accuracy"] and a["n_problems"] == b["n_problems"] == 30
    for k in ("policy_generated_tokens", "prm_tokens", "generator_calls", "nodes"):
        assert a["ledger"][k] == b["ledger"][k]


def test_preflight_refuses_what_the_clusters_python_cannot_run(head, tmp_path):
    from actors.jobs import client

    before = {j.submission_id for j in client(head).list_jobs()}
    refused = _cli("submit", str(CONFIGS / "game24-beam.yaml"), "--address", head, "--out", str(tmp_path))
    assert refused.returncode == 2, refused.stderr
    errors = [x for x in refused.stderr.splitlines() if x.strip()]
    assert len(errors) == 1, refused.stderr  # one line, naming the module and the fix
    assert re.match(r"error: preflight: the cluster's python \(.+\) cannot import (yaml|pydantic|msgpack)\b",
                    errors[0]), errors  # fmt: skip
    assert "--python PATH" in errors[0] and "--pip" in errors[0]
    # nothing started: no job, and the probe left no entry either
    assert {j.submission_id for j in client(head).list_jobs()} == before
    missing = _cli(
        "submit", str(CONFIGS / "game24-beam.yaml"), "--address", head, "--out", str(tmp_path),
        "--python", "/no/such/python",
    )  # fmt: skip
    assert missing.returncode == 2 and "cannot run /no/such/python" in missing.stderr, missing.stderr


def test_a_failed_job_says_why(head, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    sub = _cli(
        "submit", str(CONFIGS / "game24-beam.yaml"), "--address", head, "--out", str(blocker / "run"),
        "--python", VENV_PYTHON, "--no-preflight",
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    assert "; no preflight" in sub.stderr
    job = sub.stdout.strip().splitlines()[-1]
    assert _wait(head, job) == "FAILED"
    cause = f"cause: error: --out {blocker / 'run'}: cannot write there: Not a directory"
    status = _cli("status", job, "--address", head).stdout.splitlines()
    assert status[0] == "FAILED" and status[1].startswith("ray: Job entrypoint command failed"), status
    assert status[2] == cause and status[3].startswith("hint: the run dir cannot be written"), status
    watched = _cli("watch", job, "--address", head)  # the job has ended: one block, then it returns
    assert watched.returncode == 0 and cause in watched.stdout.splitlines()
    res = _cli("results", job, "--address", head)
    assert res.returncode == 1 and res.stdout.startswith(f"job {job} FAILED\nray: "), res.stdout
    assert cause in res.stdout and "no problem has finished yet" in res.stdout


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
        "--python",
        VENV_PYTHON,
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
