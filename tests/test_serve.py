"""``treesearch serve`` for real: a subprocess on 127.0.0.1 (local Ray, Ray Serve, the pools
started once), called with the official ``openai`` client and curl; a generator replica
SIGKILLed under a 100-request load; a clean stop on SIGTERM; and once on the embedded vLLM models."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from .test_cli import CONFIGS

KEY = "serve-key"
PUZZLES = [
    "4 6 8 13",
    "1 2 3 4",
    "2 3 5 12",
    "1 5 5 5",
    "3 3 8 8",
    "1 1 4 6",
    "2 2 10 10",
    "1 3 4 6",
    "4 4 10 10",
    "1 2 7 7",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(
    out: Path, *args: str, timeout_s: float = 300
) -> Iterator[tuple[str, subprocess.Popen, list[str]]]:
    """``treesearch serve ARGS`` until its ready line; yields (base URL, process, its stdout lines)."""
    port = _port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "treesearch.cli",
            "serve",
            *args,
            "--port",
            str(port),
            "--out",
            str(out),
            "--api-key",
            KEY,
            "--grace-s",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"serve exited ({proc.wait()}): {proc.stderr.read()[-3000:]}")
        lines.append(line.rstrip("\n"))
        if "serving" in line:
            break
    try:
        yield f"http://127.0.0.1:{port}", proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory, uses_ray):
    out = tmp_path_factory.mktemp("serve")
    with serving(out, str(CONFIGS / "game24-beam.yaml"), str(CONFIGS / "game24-mcts.yaml")) as s:
        yield (*s, out)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60)


def test_serve_says_one_ready_line_and_answers_the_openai_client_and_curl(server):
    url, _proc, lines, out = server
    assert len(lines) == 1 and lines[0].startswith(
        "treesearch serving game24-beam, game24-mcts at http://127.0.0.1:"
    )
    client = _client(url)
    assert [m.id for m in client.models.list()] == ["game24-beam", "game24-mcts"]
    r = client.chat.completions.create(
        model="game24-mcts", messages=[{"role": "user", "content": "4 6 8 13"}], n=2
    )
    assert len({c.message.content for c in r.choices}) == 2 and r.choices[0].finish_reason == "stop"
    ts = r.model_extra["treesearch"]
    body = json.dumps(
        {
            "model": "game24-beam",
            "messages": [{"role": "user", "content": "4 6 8 13"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    streamed = _curl(
        "-N",
        "-H",
        f"Authorization: Bearer {KEY}",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        f"{url}/v1/chat/completions",
    )
    events = [x for x in streamed.stdout.splitlines() if x.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["usage"]["completion_tokens"] > 0
    unauthorized = _curl("-w", "%{http_code}", f"{url}/v1/models")
    assert unauthorized.stdout.endswith("401") and json.loads(unauthorized.stdout[:-3])["error"]["code"]
    tree = _curl("-H", f"Authorization: Bearer {KEY}", f"{url}/v1/trees/{ts['tree_id']}")
    assert json.loads(tree.stdout)["result"]["answer_node"] is not None
    rows = (next(out.iterdir()) / "results.jsonl").read_text().splitlines()
    assert ts["tree_id"] in {json.loads(x)["id"] for x in rows}


def test_a_replica_killed_under_load_loses_no_request(server):
    """100 requests from 16 clients; a generator replica is SIGKILLed while they run: every
    request is answered once, and each answer is its own search in the run dir."""
    url, _proc, _, out = server
    client = _client(url)
    before = {
        json.loads(x)["id"] for d in out.iterdir() for x in (d / "results.jsonl").read_text().splitlines()
    }

    def ask(i: int) -> str:
        r = client.chat.completions.create(
            model=["game24-mcts", "game24-beam"][i % 2],
            messages=[{"role": "user", "content": PUZZLES[i % 10]}],
            extra_body={"treesearch": {"seed": i}},
        )
        return r.model_extra["treesearch"]["tree_id"]

    killed = threading.Event()

    def kill_one() -> None:
        time.sleep(1.0)
        pids = subprocess.run(["pgrep", "-f", "ReplicaActor"], capture_output=True, text=True).stdout.split()
        if pids:
            os.kill(int(pids[0]), signal.SIGKILL)
            killed.set()

    killer = threading.Thread(target=kill_one)
    killer.start()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(ask, range(100)))
    killer.join()
    assert killed.is_set()
    after = [
        json.loads(x)["id"] for d in out.iterdir() for x in (d / "results.jsonl").read_text().splitlines()
    ]
    new = [x for x in after if x not in before]
    assert len(ids) == len(set(ids)) == 100 and sorted(new) == sorted(ids)  # each answered and written once


def test_sigterm_drains_and_stops_cleanly(server):
    """The module's server, stopped with a search in flight: it answers, then stops, saying only
    its own two lines."""
    url, proc, _lines, _out = server
    client = _client(url)
    answer = ThreadPoolExecutor(1).submit(
        client.chat.completions.create, model="game24-mcts", messages=[{"role": "user", "content": "1 2 3 4"}]
    )
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert answer.result(timeout=60).choices[0].finish_reason in ("stop", "length")  # drained, not dropped
    assert proc.wait(timeout=60) == 0
    said = proc.stdout.read().splitlines()
    assert said[-2:] == ["stopping: draining searches in flight (at most 5 s)", "stopped"]
    # the replica killed under load earlier: one line of ours for its death, one for its return
    died = re.compile(
        r"(generator|PRM) replica \d+ (down|not answering); Ray restarts it \(restart 1 of 3\)$"
    )
    back = re.compile(
        r"(generator|PRM) replica \d+ (back after \d+ s|died and Ray restarted it \(restart 1\))$"
    )
    assert said[:-2] and all(died.match(x) or back.match(x) for x in said[:-2]), said
    assert proc.stderr.read().strip() == ""  # only our lines, on stdout


def test_serve_on_the_embedded_models(tmp_path, uses_vllm):
    """The main config as a profile: vLLM generator and PRM replicas, warm; a search and a
    streamed one through the openai client."""
    with serving(
        tmp_path / "out",
        str(CONFIGS / "game24.yaml"),
        "--set",
        "generator.gpu_memory_utilization=0.1",
        "--set",
        "prm.gpu_memory_utilization=0.1",
        timeout_s=600,
    ) as (url, _proc, _lines):
        client = _client(url)
        r = client.chat.completions.create(
            model="game24",
            messages=[{"role": "user", "content": "4 6 8 13"}],
            extra_body={"treesearch": {"budget": {"generated_tokens": 600}}},
        )
        ts = r.model_extra["treesearch"]
        assert r.usage.completion_tokens == ts["ledger"]["policy_generated_tokens"] <= 600
        assert (
            r.usage.prompt_tokens_details.cached_tokens > 0
        )  # vLLM's prefix cache served the tree's prefixes
        chunks = list(
            client.chat.completions.create(
                model="game24", stream=True, messages=[{"role": "user", "content": "1 2 3 4"}]
            )
        )
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
