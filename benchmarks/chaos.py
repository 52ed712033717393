"""Chaos: one job on Ray while faults keep coming; nothing lost, nothing counted twice.

A Ray head is started here (so the cluster outlives the driver). An undisturbed run of the job
comes first, then the same job while a bounded fault loop, a round every ``--interval`` seconds:

- SIGKILLs the process of a random generator or PRM replica that answers (Ray restarts it; the
  dispatcher re-issues the requests it held; requests wait while every replica of a pool is
  restarting: a vLLM engine takes about a minute to come back on this box), one a round, at
  most ``--driver-kill-at`` of them before the driver kill (the resumed driver gets the rest),
  until ``--faults`` faults are in; the rest of the run is left alone;
- once, the first replica fault after the driver kill, SIGSTOPs one instead: a hang, not a
  death (the dispatcher's per-request deadline, ``resources.request_timeout_s``, re-issues its
  requests elsewhere and has Ray kill and restart the replica);
- once, when ``--driver-kill-at`` of the problems are written (half; smoke a third, so most
  replica faults land on the resumed driver), SIGKILLs the driver and resumes the run dir
  (``treesearch run ... --resume``) on the same cluster.

It reports the faults injected, the requests re-issued, the problems answered (each exactly
once, 0 failed), the accuracy of both runs with Wilson 95% intervals, generated tokens per
problem of both runs, and the wall-time overhead; the exit status is 1 if a guarantee broke.

  .venv/bin/python -m benchmarks.chaos                  # real vLLM: 200 problems, >= 20 faults
  .venv/bin/python -m benchmarks.chaos --smoke          # deterministic backends (the suite)

Replicas are found by their actor names (``treesearch/<pool>/<i>/...``, see actors/replicas.py)
from a second Ray driver in this process, which asks each for its pid; faults are signals to
that pid (same machine), i.e. real process deaths, not ``ray.kill``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from actors.replicas import REPLICA_PREFIX
from treesearch.budget import comparable_rows

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

# The real stack: the main job's embedded models on vLLM, two replicas of each pool, a smaller
# KV cache each (four engines share this box's RAM), restarts without limit, a deadline.
REAL = [
    "task.split=train",  # 1,162 puzzles (the test split has 100)
    "generator.resources={replicas: 2, num_cpus: 0.5, max_restarts: -1, request_timeout_s: 60}",
    "prm.resources={replicas: 2, num_cpus: 0.5, max_restarts: -1, request_timeout_s: 60}",
    "generator.gpu_memory_utilization=0.1",
    "prm.gpu_memory_utilization=0.1",
    "run.search_workers=0",
]
# Deterministic backends (configs/game24-beam.yaml) with a latency, so faults land on requests
# in flight.
SMOKE = [
    "generator.latency_s=0.05",
    "prm.latency_s=0.05",
    "generator.resources={replicas: 2, num_cpus: 0, max_restarts: -1, request_timeout_s: 3}",
    "prm.resources={replicas: 2, num_cpus: 0, max_restarts: -1, request_timeout_s: 3}",
    "run.concurrency=8",
    "run.search_workers=0",
]


@dataclass
class Faults:
    """What the fault loop did: (seconds since the chaos run began, kind, target) per fault."""

    log: list[tuple[float, str, str]] = field(default_factory=list)
    hung: list[int] = field(default_factory=list)  # SIGSTOPped pids, let go at the end
    hang_cleared_s: float | None = None  # from the SIGSTOP until the hung process was gone
    hung_at: float = 0.0

    def add(self, t0: float, kind: str, target: str) -> None:
        self.log.append((round(time.monotonic() - t0, 1), kind, target))
        print(f"  fault {len(self.log):>2} at {self.log[-1][0]:>6.1f} s: {kind} {target}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(num_cpus: int) -> tuple[subprocess.Popen, str]:
    """A Ray head of its own on 127.0.0.1 (its process group is stopped at the end); its GCS
    address. Token auth off, in this process's environment so the drivers started from here
    inherit it: ``ray start`` turns auth on by itself where ``~/.ray/auth_token`` exists, and a
    client connecting to an address does not, unless told."""
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_ADDRESS="")
    port = free_port()
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
         "--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}",
         "--disable-usage-stats", "--block"],  # (not 52365: another Ray on this machine may hold it)
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            ray.init(address=address, namespace="chaos", log_to_driver=False)
            return proc, address
        except Exception:  # not up yet
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_head(proc)
                raise RuntimeError(f"the Ray head on {address} did not start") from None
            time.sleep(1)


def stop_head(proc: subprocess.Popen) -> None:
    """Stops the head's process group (its GCS, raylet and workers), then this driver."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(Exception):
        ray.shutdown()


def driver(
    args: argparse.Namespace, address: str, out: Path, log: Path, resume: bool = False
) -> subprocess.Popen:
    config = ROOT / "configs" / ("game24-beam.yaml" if args.smoke else "game24.yaml")
    cmd = [sys.executable, "-m", "treesearch.cli", "run", str(config), "--address",
           address, "--out", str(out), "--limit", str(args.problems)]  # fmt: skip
    for s in SMOKE if args.smoke else REAL:
        cmd += ["--set", s]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    with open(log, "a") as f:
        return subprocess.Popen(cmd + (["--resume"] if resume else []), cwd=ROOT, stdout=f, stderr=f, env=env)


def rows(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def replica_pids() -> list[tuple[str, int]]:
    """(pool/index, pid) of every replica that answers (a hung or restarting one does not).

    All are asked at once; after the first answer (at most 3 s) the others get 0.25 s more, which
    a live replica needs a few ms of (``info`` is async). Waiting 3 s for every one, a hung or
    restarting replica made each round 3 s long and the smoke's run ended before its faults did."""
    asked: dict[Any, str] = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if not a["name"].startswith(REPLICA_PREFIX):
            continue
        with contextlib.suppress(Exception):  # gone between the listing and the lookup
            handle = ray.get_actor(a["name"], namespace=a["namespace"])
            asked[handle.info.remote()] = "/".join(a["name"].split("/")[1:3])
    if not asked:
        return []
    ready, rest = ray.wait(list(asked), num_returns=1, timeout=3)
    if ready and rest:
        ready += ray.wait(rest, num_returns=len(rest), timeout=0.25)[0]
    found = []
    for ref in ready:
        with contextlib.suppress(Exception):  # died while answering
            found.append((asked[ref], int(ray.get(ref)["pid"])))
    return found


def next_replica_fault(
    done: int, planned: int, driver_killed: bool, hung: bool, kill_at: float
) -> signal.Signals | None:
    """The signal of the next replica fault (SIGKILL, or SIGSTOP for the one hang), or None when
    none is due: ``done`` of ``planned`` replica faults are in. Before the driver kill at most
    ``round(planned * kill_at)`` land, so the resumed driver gets the rest, the hang first.

    Paced by the clock (a round each ``--interval``), not by results written: the real job's
    problems finish in waves of ``run.concurrency``, so its rows stood still for minutes."""
    if done >= planned or (not driver_killed and done >= round(planned * kill_at)):
        return None
    return signal.SIGSTOP if driver_killed and not hung else signal.SIGKILL


def chaos_run(args: argparse.Namespace, address: str, out: Path, log: Path) -> tuple[Faults, float]:
    """The job under the fault loop; returns what was injected and the wall time (s)."""
    rng = random.Random(args.seed)
    faults, t0 = Faults(), time.monotonic()
    proc = driver(args, address, out, log)
    driver_killed = False
    while proc.poll() is None:  # the resumed driver replaces the killed one
        time.sleep(args.interval)
        if faults.hung and faults.hang_cleared_s is None and not alive(faults.hung[0]):
            faults.hang_cleared_s = round(time.monotonic() - faults.hung_at, 1)
            print(f"  hang cleared after {faults.hang_cleared_s} s (the deadline re-issued and restarted)")
        if proc.poll() is not None:
            break
        if not driver_killed and len(rows(out)) >= args.problems * args.driver_kill_at:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            faults.add(t0, "SIGKILL", "driver")
            driver_killed = True
            proc = driver(args, address, out, log, resume=True)
            continue
        if len(faults.log) >= args.faults:
            continue  # bounded: the rest of the run is left alone
        done = len(faults.log) - driver_killed
        sig = next_replica_fault(done, args.faults - 1, driver_killed, bool(faults.hung), args.driver_kill_at)
        if sig is None:
            continue
        live = replica_pids()  # replicas that answer: not restarting, not hung
        if not live:
            continue
        target, pid = rng.choice(live)
        hang = sig == signal.SIGSTOP
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
        if hang:
            faults.hung.append(pid)
            faults.hung_at = time.monotonic()
        faults.add(t0, "SIGSTOP (hang)" if hang else "SIGKILL", f"{target} pid {pid}")
    wall = time.monotonic() - t0
    for pid in faults.hung:  # if the deadline has not had it killed, let it go
        with_signal(pid, signal.SIGCONT)
    if proc.returncode != 0:
        raise SystemExit(f"the chaos driver exited with {proc.returncode}; see {log}")
    return faults, wall


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def with_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of k successes in n (95% by default)."""
    if n == 0:
        return 0.0, 0.0
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


def reissued(summary: dict[str, Any]) -> int:
    """Requests re-issued by the dispatchers in the run's last session (either pool; nested
    where search workers ran): a killed driver's counters are not in the summary."""
    total = 0
    for k, v in summary.items():
        if isinstance(v, dict):
            total += reissued(v)
        elif k.endswith("_reissued") and isinstance(v, int):
            total += v
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="deterministic backends, 64 problems, 8 faults")
    ap.add_argument("--problems", type=int, default=None, help="problems per run (default 200; smoke 64)")
    ap.add_argument(
        "--faults",
        type=int,
        default=None,
        help="faults to inject, the driver kill included (default 20; smoke 8)",
    )
    ap.add_argument(
        "--interval", type=float, default=None, help="seconds per fault-loop round (default 6; smoke 0.4)"
    )
    ap.add_argument(
        "--driver-kill-at",
        type=float,
        default=None,
        help="share of the problems written when the driver is killed (default 0.5; smoke 0.33)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the fault loop")
    ap.add_argument("--out", default=None, help="keep the run dirs and logs here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args()
    # smoke: long enough for its 8 faults on a loaded 2-core box (replicas restart slowly there)
    args.problems = args.problems or (64 if args.smoke else 200)
    args.faults = args.faults or (8 if args.smoke else 20)
    args.interval = args.interval or (0.4 if args.smoke else 6.0)
    args.driver_kill_at = args.driver_kill_at or (0.33 if args.smoke else 0.5)
    if not 0 < args.driver_kill_at < 1:
        ap.error(f"--driver-kill-at must be between 0 and 1, not {args.driver_kill_at}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the head is stopped (finally)
    work = Path(args.out or tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    head, address = start_head(num_cpus=2 if args.smoke else 4)
    try:
        kind = "deterministic" if args.smoke else "vLLM"
        print(f"chaos: {args.problems} problems, {kind} backends, Ray head {address}, work dir {work}")
        t = time.monotonic()
        base = driver(args, address, work / "undisturbed", work / "undisturbed.log")
        if base.wait() != 0:
            raise SystemExit(f"the undisturbed run failed; see {work / 'undisturbed.log'}")
        base_wall = time.monotonic() - t
        print(f"undisturbed: {base_wall:.1f} s")
        faults, wall = chaos_run(args, address, work / "chaos", work / "chaos.log")
    finally:
        stop_head(head)
    report = compare(args, work, faults, base_wall, wall)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if report["broken"]:
        print("broken: " + "; ".join(report["broken"]))
        sys.exit(1)


def compare(args: argparse.Namespace, work: Path, faults: Faults, base_wall: float, wall: float) -> dict:
    """Checks the guarantees and prints the figures; returns them."""
    base_rows, chaos_rows = rows(work / "undisturbed"), rows(work / "chaos")
    ids = [r["id"] for r in chaos_rows]
    summary = json.loads((work / "chaos" / "summary.json").read_text())
    n = len(chaos_rows)
    ok = [r for r in chaos_rows if r.get("status", "ok") != "failed"]
    acc = {
        name: (sum(r["correct"] for r in rs), len(rs))
        for name, rs in (("undisturbed", base_rows), ("chaos", ok))
    }
    runs = (("undisturbed", base_rows), ("chaos", chaos_rows))
    tokens = {
        name: sum(r["ledger"]["policy_generated_tokens"] for r in rs) / max(1, len(rs)) for name, rs in runs
    }
    kinds = [k for _, k, _ in faults.log]
    report = {
        "problems": args.problems,
        "faults": len(kinds),
        "replica_kills": sum(1 for _, k, t in faults.log if k == "SIGKILL" and t != "driver"),
        "hangs": sum(1 for k in kinds if k.startswith("SIGSTOP")),
        "hang_cleared_s": faults.hang_cleared_s,
        "driver_kills": sum(1 for _, _, t in faults.log if t == "driver"),
        "reissued": reissued(summary),
        "answered": n,
        "unique": len(set(ids)),
        "failed": n - len(ok),
        "accuracy": {k: [c / max(1, m), *wilson(c, m)] for k, (c, m) in acc.items()},
        "generated_tokens_per_problem": tokens,
        "wall_s": {"undisturbed": round(base_wall, 1), "chaos": round(wall, 1)},
        "fault_log": faults.log,
    }
    broken = []
    if len(set(ids)) != n or n != args.problems:
        broken.append(f"{n} rows, {len(set(ids))} distinct ids, {args.problems} problems")
    if report["failed"]:
        broken.append(f"{report['failed']} problems failed")
    if report["hangs"] and faults.hang_cleared_s is None:
        broken.append("the hung replica was never restarted (no deadline fired)")
    if report["faults"] < args.faults:
        broken.append(f"only {report['faults']} faults injected (the run ended first)")
    (bc, bn), (cc, cn) = acc["undisturbed"], acc["chaos"]
    lo, hi = wilson(bc, bn)
    if not lo <= cc / max(1, cn) <= hi:
        broken.append(
            f"chaos accuracy {cc}/{cn} outside the undisturbed run's 95% interval [{lo:.3f}, {hi:.3f}]"
        )
    # deterministic backends: the very same results, ledgers included
    if args.smoke and not broken and comparable_rows(base_rows) != comparable_rows(chaos_rows):
        broken.append("results or ledgers differ from the undisturbed run")
    report["broken"] = broken
    r = report
    print(f"faults injected: {r['faults']} ({r['replica_kills']} replica SIGKILLs, {r['hangs']} hang, "
          f"{r['driver_kills']} driver SIGKILL + resume); requests re-issued in the last session: "
          f"{r['reissued']} (the killed driver's counters died with it)")  # fmt: skip
    print(f"problems answered: {n} of {args.problems}, {len(set(ids))} distinct, {report['failed']} failed")
    for k, (c, m) in acc.items():
        lo, hi = wilson(c, m)
        print(f"accuracy {k}: {c}/{m} = {c / max(1, m):.1%} (95% [{lo:.1%}, {hi:.1%}]); "
              f"generated tokens/problem {tokens[k]:.0f}")  # fmt: skip
    dup, lost = n - len(set(ids)), args.problems - len(set(ids))
    print(f"ratio: chaos/undisturbed wall {wall / base_wall:.2f}x ({wall:.1f} s vs {base_wall:.1f} s), "
          f"{r['faults']} faults, {dup} duplicated, {lost} lost")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
