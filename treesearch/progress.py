"""Live progress of a run: a bar with ETA on a terminal, periodic lines elsewhere, and
``status.json`` in the run dir for ``treesearch status --run-dir`` (and a cluster job's status).

Rates are rates: each is the sum over the problems that finished in the last
:data:`WINDOW_S` seconds divided by the span of that window (not totals over the elapsed time,
which climb while every problem is still running). Tokens are counted when a problem finishes
(its ledger), so a rate is the throughput of finished work: in a steady state it is the
cluster's generation rate; in the first minute, before problems finish, it reads 0 and the ETA
says ``?``. With a ``load`` source (runs on Ray: :class:`actors.load.LoadMonitor`), the figures
also carry each replica's busy fraction over the window and its queue; the line shows each
pool's mean busy %, ``treesearch status`` every replica.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from treesearch.errors import ConfigError
from treesearch.safeio import read_json

WINDOW_S = 60.0  # seconds of finished problems the rates and the ETA are taken over
LINE_EVERY_S = 10.0  # seconds between plain lines (not a terminal: CI, Ray job logs)
STATUS_EVERY_S = 2.0  # seconds between rewrites of status.json
STALE_S = 30.0  # a "running" status.json not rewritten for this long: its run has stopped writing
BAR = 20  # characters of the bar
WINDOW_TOKENS = (
    "policy_generated_tokens",
    "prm_tokens",
    "policy_prompt_tokens",
    "policy_cached_prompt_tokens",
)


class Progress:
    """Counts finished problems; shows and publishes the figures.

    Attributes:
      total: problems of the run (finished in earlier sessions included).
      done: problems finished (earlier sessions included); ``failed`` of them failed.
      correct, covered, answered: over the problems finished in this session and not failed.
      window: ``(time, *WINDOW_TOKENS)`` per problem finished in the last ``WINDOW_S`` seconds.
      load: returns the replicas' load per pool (``LoadMonitor.snapshot``), or None (in-process).
    """

    def __init__(
        self,
        total: int,
        done: int = 0,
        stream: TextIO | None = sys.stderr,
        status_path: Path | None = None,
        clock: Any = time.monotonic,
        load: Callable[[], dict[str, list[dict[str, Any]]]] | None = None,
        open_ended: bool = False,
    ):
        self.total, self.done, self.stream, self.status_path, self.clock = (
            total,
            done,
            stream,
            status_path,
            clock,
        )
        self.failed = self.correct = self.covered = self.answered = 0
        self.window: collections.deque[tuple[float, int, int, int, int]] = collections.deque()
        self.load, self.open_ended = load, open_ended  # open-ended: a service, running until closed
        self.started = clock()
        self.tty = bool(stream is not None and stream.isatty())
        self._last_line = self._last_status = -1e18
        self.publish(force=True)

    def update(self, row: dict[str, Any]) -> None:
        """One finished problem (its ``results.jsonl`` row)."""
        now = self.clock()
        self.done += 1
        if row.get("status", "ok") == "failed":
            self.failed += 1
        else:
            self.answered += 1
            self.correct += bool(row["correct"])
            self.covered += bool(row["covered"])
        led = row["ledger"]
        self.window.append((now, *(int(led[k]) for k in WINDOW_TOKENS)))
        self.publish(force=self.done == self.total)

    def close(self) -> None:
        """An open-ended run (a service) has stopped: its status says so."""
        self.open_ended = False
        self.total = self.done
        self.publish(force=True)

    def figures(self) -> dict[str, Any]:
        """The figures shown and published (rates per second over the recent window)."""
        now = self.clock()
        while self.window and self.window[0][0] < now - WINDOW_S:
            self.window.popleft()
        span = min(WINDOW_S, max(1e-9, now - self.started))
        sums = [sum(w[i] for w in self.window) for i in range(1, 5)]
        per_s = len(self.window) / span
        left = self.total - self.done
        load = self.load() if self.load is not None else {}
        return {
            "done": self.done,
            "total": self.total,
            "failed": self.failed,
            "accuracy": self.correct / self.answered if self.answered else None,
            "coverage": self.covered / self.answered if self.answered else None,
            "problems_per_s": per_s,
            "generated_tokens_per_s": sums[0] / span,
            "prm_tokens_per_s": sums[1] / span,
            "prefix_cache_hit_rate": sums[3] / sums[2] if sums[2] else None,
            "eta_s": 0.0 if not left else (left / per_s if per_s else None),
            "elapsed_s": now - self.started,
            **(
                {"replicas": load, "busy": {pool: mean_busy(rows) for pool, rows in load.items()}}
                if load
                else {}
            ),
        }

    def publish(self, force: bool = False) -> None:
        """Writes the line / bar and ``status.json`` when due (always when ``force``)."""
        now = self.clock()
        due_line = self.tty or force or now - self._last_line >= LINE_EVERY_S
        due_status = force or now - self._last_status >= STATUS_EVERY_S
        if not (due_line or due_status):
            return
        f = self.figures()
        if due_status and self.status_path is not None:
            self._last_status = now
            state = "finished" if self.done == self.total and not self.open_ended else "running"
            tmp = self.status_path.with_name(".status.json.tmp")
            tmp.write_text(json.dumps({"state": state, **f, "updated_unix": time.time()}) + "\n")
            tmp.replace(self.status_path)
        if due_line and self.stream is not None:
            self._last_line = now
            line = format_status(f, bar=self.tty)
            self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
            if self.tty and self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


async def ticking(work: Awaitable[Any], progress: Progress) -> Any:
    """Awaits ``work`` while the progress is republished every :data:`STATUS_EVERY_S` seconds
    (elapsed time, ETA and replica load move while no problem finishes)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=STATUS_EVERY_S)
        if done:
            return task.result()
        progress.publish()


def watch(
    read: Callable[[], tuple[str, bool]],
    every_s: float,
    stream: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Shows ``read()``'s text every ``every_s`` seconds until it says the job has ended:
    redrawn in place on a terminal, one block after another elsewhere."""
    if every_s <= 0:
        raise ConfigError(f"--every {every_s}: give a positive number of seconds")
    stream = stream or sys.stdout  # (sys.stdout as it is now: it may have been replaced)
    tty = stream.isatty()
    while True:
        text, ended = read()
        stream.write(("\x1b[H\x1b[2J" + text + "\n") if tty else text + "\n\n")
        stream.flush()
        if ended:
            return
        sleep(every_s)


def mean_busy(rows: list[dict[str, Any]]) -> float | None:
    """Mean busy fraction of a pool's replicas that are up and have one (None: none has)."""
    busy = [r["busy"] for r in rows if r["state"] == "up" and r.get("busy") is not None]
    return sum(busy) / len(busy) if busy else None


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_status(f: dict[str, Any], bar: bool = False) -> str:
    """One line of :meth:`Progress.figures` (with a bar on a terminal)."""
    pct = f["done"] / f["total"] if f["total"] else 1.0
    head = f"[{'#' * round(BAR * pct):<{BAR}}] " if bar else ""
    acc = "-" if f.get("accuracy") is None else f"{f['accuracy']:.1%}"
    cov = "-" if f.get("coverage") is None else f"{f['coverage']:.1%}"
    hit = "" if f.get("prefix_cache_hit_rate") is None else f"  cache hit {f['prefix_cache_hit_rate']:.0%}"
    failed = f"  {f['failed']} failed" if f["failed"] else ""
    busy = "".join(
        f"  {pool} busy {'-' if b is None else f'{b:.0%}'}" for pool, b in (f.get("busy") or {}).items()
    )
    return (
        f"{head}{f['done']}/{f['total']}{failed}  accuracy {acc}  coverage {cov}  "
        f"{f['generated_tokens_per_s']:,.0f} gen tok/s  {f['prm_tokens_per_s']:,.0f} PRM tok/s{hit}{busy}  "
        f"ETA {_eta(f['eta_s'])}"
    )


def describe_replicas(replicas: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per replica: ``generator 0: up, busy 93%, queue 12, 4,210 requests``."""
    lines = []
    for pool, rows in replicas.items():
        for r in rows:
            busy = "-" if r.get("busy") is None else f"{r['busy']:.0%}"
            figures = f", busy {busy}, queue {r['queue']}, {r['requests']:,} requests" if "queue" in r else ""
            lines.append(f"  {pool} {r['replica']}: {r['state']}{figures}")
    return lines


def read_status(run_dir: Path) -> dict[str, Any]:
    """A run dir's ``status.json`` (live figures of a running or finished run)."""
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no status.json (not a run dir, or its run has not started)")
    status = read_json(path)
    for key in ("state", "done", "total", "generated_tokens_per_s", "prm_tokens_per_s", "eta_s", "failed"):
        if key not in status:
            raise ConfigError(f"{path}: not a status record (no {key!r})")
    return status


def run_state(status: dict[str, Any]) -> str:
    """``finished``, ``running``, or ``stopped`` (says running, but not rewritten for
    :data:`STALE_S` seconds: killed, or its machine gone)."""
    if status["state"] == "running" and time.time() - status.get("updated_unix", time.time()) > STALE_S:
        return "stopped"
    return str(status["state"])


def is_running(run_dir: Path) -> bool:
    """Whether a run is still writing (its ``status.json`` says ``running`` and is fresh)."""
    try:
        return run_state(read_status(run_dir)) == "running"
    except ConfigError:
        return False


def describe_status(status: dict[str, Any]) -> str:
    """``running: 45/100 accuracy ... (updated 3 s ago)``, then one line per replica."""
    age = time.time() - status.get("updated_unix", time.time())
    state = run_state(status)
    note = " (no longer updated: the run has stopped)" if state == "stopped" else ""
    head = f"{state}: {format_status(status)} (updated {age:.0f} s ago){note}"
    return "\n".join([head, *describe_replicas(status.get("replicas") or {})])
