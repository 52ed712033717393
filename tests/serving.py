"""Servers for the service tests, both on the same profiles and called the same way:

- ``app``: the FastAPI app and :class:`SearchService` in this process, served by uvicorn on
  127.0.0.1 (in-process backends);
- ``serve``: ``treesearch serve`` in a subprocess (a local Ray, Ray Serve, warm pools).

Profiles (model ids): ``game24-beam`` and ``game24-mcts`` (the deterministic configs), and
``game24-slow`` / ``game24-batch`` (MCTS on a generator that takes 0.2 s per call, one pool
for both, no CPU reserved): searches that last long enough to be cut, cancelled or batched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
KEY = "test-key"
PUZZLE = [{"role": "user", "content": "Use 4 6 8 13 to make 24."}]
UNSOLVABLE = [{"role": "user", "content": "1 1 1 1"}]  # no 24: a search runs until it is stopped


def write_profiles(folder: Path) -> list[Path]:
    """The four profiles' config files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("game24-beam", "game24-mcts"):
        paths.append(folder / f"{name}.yaml")
        paths[-1].write_text((CONFIGS / f"{name}.yaml").read_text())
    slow = yaml.safe_load((CONFIGS / "game24-mcts.yaml").read_text())
    slow["generator"] |= {"latency_s": 0.2, "resources": {"num_cpus": 0}}
    slow["prm"] |= {"resources": {"num_cpus": 0}}
    slow["budget"] = {"generated_tokens": 20_000}  # the most a request may ask
    for name in ("game24-slow", "game24-batch"):
        paths.append(folder / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(slow))
    return paths


@dataclass
class Server:
    """A running server: its base URL and run dir (``results.jsonl``, ``trees/``, ``status.json``)."""

    kind: str
    url: str
    out: Path
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)  # what ``treesearch serve`` said up to ready

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=120)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    def status(self) -> dict[str, Any]:
        return self.get("/v1/status").json()

    @property
    def run_dir(self) -> Path:
        if self.kind == "app":
            return self.out
        (replica,) = [d for d in self.out.iterdir() if d.is_dir()]  # one ingress replica
        return replica

    def rows(self) -> dict[str, dict[str, Any]]:
        path = self.run_dir / "results.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return {row["id"]: row for row in map(json.loads, lines)}

    def pids(self, pattern: str) -> list[int]:
        """Processes of this server's own Ray (its descendants) whose command line has ``pattern``
        (``ReplicaActor``: the pools' replicas; ``SearchIngress``, ``ProxyActor``: Serve's)."""
        parent: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parent[int(stat.parent.name)] = int(fields[1])
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout

        def ours(pid: int) -> bool:
            while pid > 1:
                if self.proc is not None and pid == self.proc.pid:
                    return True
                pid = parent.get(pid, 0)
            return False

        return [p for p in map(int, found.split()) if ours(p)]

    def rss_mb(self) -> float:
        """Resident memory of what serves: this process, or Serve's ingress replica and proxy."""
        pids = [os.getpid()] if self.kind == "app" else self.pids("SearchIngress|ProxyActor")
        total = 0.0
        for pid in pids:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(out: Path, profiles: list[Path], **options: Any) -> Iterator[Server]:
    """The app in this process (``options``: :class:`ServiceOptions` fields)."""
    import uvicorn

    from treesearch.config import load_config
    from treesearch.http import make_app
    from treesearch.job import resolve
    from treesearch.service import SearchService, ServiceOptions

    jobs = {p.stem: resolve(load_config(p)) for p in profiles}
    service = SearchService(jobs, lambda job: (None, None), ServiceOptions(**options), out)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(service, KEY), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield Server("app", f"http://127.0.0.1:{port}", out)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_server(out: Path, *args: str, timeout_s: float = 300) -> Iterator[Server]:
    """``treesearch serve ARGS`` until its ready line; SIGTERM after (SIGKILL if it hangs)."""
    port = free_port()
    cmd = [sys.executable, "-m", "treesearch.cli", "serve", *args, "--port", str(port), "--out", str(out),
           "--api-key", KEY, "--grace-s", "5"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
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
        yield Server("serve", f"http://127.0.0.1:{port}", out, proc, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def server_of(kind: str, tmp: Path, **options: Any) -> Iterator[Server]:
    """A server of ``kind`` on the four profiles (``options``: limits, named as in
    :class:`ServiceOptions`)."""
    profiles = write_profiles(tmp / "profiles")
    if kind == "app":
        with app_server(tmp / "run", profiles, **options) as s:
            yield s
        return
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    with serve_server(tmp / "run", *map(str, profiles), *flags) as s:
        yield s


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=timeout)


def malformed_bodies(rng: Any) -> list[tuple[str, bytes]]:
    """Over 500 bad requests: what a broken client, a fuzzer or a hostile caller sends."""
    good = {"model": "game24-beam", "messages": PUZZLE}
    raw = [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b"null",
        b"\xff\xfe{}",
        b'{"model": "\xc3\x28"}',
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b"{" + b" " * (2 << 20) + b"}",
        json.dumps({**good, "pad": "x" * (2 << 20)}).encode(),
    ]
    bad_fields: dict[str, list[Any]] = {
        "model": [5, None, [], {"id": 1}],
        "messages": [
            "4 6 8 13",
            [],
            None,
            [{}],
            [{"role": "user"}],
            [{"role": "wizard", "content": "4 6 8 13"}],
            [{"role": "user", "content": 24}],
            [{"role": "system", "content": "x"}],
            [{"role": "user", "content": "4 6 8 13"}] * 10_000,
        ],
        "n": ["3", 0, -1, 1000, 2.5, True],
        "stream": ["yes", 1],
        "temperature": [-1, 5, "hot"],
        "max_completion_tokens": [0, -3, "ten", 1.5],
        "seed": [-1, "s", 2**40],
        "top_p": [0.5],
        "logprobs": [True],
        "frobnicate": [1],
        "stream_options": [{"include_usage": "yes"}, {"x": 1}, 3],
    }
    search: dict[str, list[Any]] = {
        "algorithm": ["astar", 3, None],
        "params": [{"width": 0}, {"widht": 2}, {"width": "w"}, 5],
        "budget": [
            {"generated_tokens": -1},
            {"generated_tokens": 0},
            {"tokens": 5},
            {"seconds": float("inf")},
            {"flops": "many"},
            {"nodes": True},
            [1],
        ],
        "deadline_s": [0, -5, 1e9, "soon"],
        "seed": [-2],
        "return_tree": ["all", 1],
        "extra": [1],
    }
    cases = [(f"raw {i}", r) for i, r in enumerate(raw)]
    for key, values in bad_fields.items():
        for v in values:
            cases.append((f"{key}={str(v)[:30]}", json.dumps({**good, key: v}, allow_nan=True).encode()))
    for key, values in search.items():
        for v in values:
            body = json.dumps({**good, "treesearch": {key: v}}, allow_nan=True).encode()
            cases.append((f"treesearch.{key}", body))
    while len(cases) < 520:  # random mutations of a good body: cut, flipped bytes, wrong-typed fields
        body = json.dumps(
            {**good, "treesearch": {"budget": {"generated_tokens": rng.choice([-7, 0, "x", 1e400])}}}
        )
        kind = rng.randrange(3)
        if kind == 0:
            body = body[: rng.randrange(len(body))]
        elif kind == 1:
            b = bytearray(body.encode())
            b[rng.randrange(len(b))] = rng.randrange(256)
            cases.append(("flipped", bytes(b)))
            continue
        cases.append((f"mutation {kind}", body.encode()))
    return cases
