"""How busy each replica is, for the progress line and ``treesearch status``.

A :class:`LoadMonitor` asks every replica for its :meth:`actors.replica.ReplicaActor.load` every
``every_s`` seconds on a thread of the driver (so the engine's event loop never waits on it) and
keeps the answers of the last ``window_s`` seconds. A replica's busy fraction is the growth of
its busy seconds over the growth of its own clock across that window: the share of the time it
had at least one request, whoever sent it (every search worker's pool counts). A replica whose
call fails is reported ``down`` (dead); one that does not answer within ``every_s``,
``no answer`` (restarting, stalled, or its node overloaded). With ``say``, each change is one line
of ours (``generator replica 0 down; Ray restarts it (restart 1 of 3)``, ``generator replica 0
back after 14 s``), where Ray would print its own paragraph (:func:`actors.replicas.init_ray`
keeps that one off the terminal).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from treesearch.progress import WINDOW_S


class LoadMonitor:
    """Polls replicas' load on a daemon thread; :meth:`snapshot` reads the latest figures.

    Args:
      pools: pool name (``generator``, ``PRM``) -> replica handles, in replica order.
      every_s: seconds between polls (also how long one poll waits for an answer).
      window_s: seconds of answers the busy fraction is taken over.
    """

    def __init__(
        self,
        pools: dict[str, list[Any]],
        every_s: float = 2.0,
        window_s: float = WINDOW_S,
        say: Callable[[str], None] | None = None,
        max_restarts: dict[str, int] | None = None,
    ):
        self.pools = {name: list(handles) for name, handles in pools.items() if handles}
        self.every_s = every_s
        # (pool, replica) -> answers of the window, oldest first; "down" / "no answer" for a missed poll
        self.seen: dict[tuple[str, int], collections.deque[dict[str, Any] | str]] = {
            (name, i): collections.deque(maxlen=max(2, round(window_s / every_s) + 1))
            for name, handles in self.pools.items()
            for i in range(len(handles))
        }
        self.say, self.max_restarts = say, max_restarts or {}
        self._lock = threading.Lock()
        self._state: dict[tuple[str, int], tuple[str, int | None, float]] = {}  # (state, pid, since)
        self.restarts: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="treesearch-load", daemon=True)

    def __enter__(self) -> LoadMonitor:
        self.poll()  # one answer before the first progress line, a second one every_s later
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s * 2)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        """Asks every replica once (at most ``every_s`` seconds)."""
        refs = {h.load.remote(): (name, i) for name, hs in self.pools.items() for i, h in enumerate(hs)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.every_s)
        answers: dict[tuple[str, int], dict[str, Any] | str] = dict.fromkeys(refs.values(), "no answer")
        for ref in ready:
            try:
                answers[refs[ref]] = ray.get(ref)
            except Exception:  # the replica is dead (or died between the call and its answer)
                answers[refs[ref]] = "down"
        self._tell(answers)
        with self._lock:
            for key, answer in answers.items():
                seen = self.seen[key]
                counts = [a["busy_seconds"] for a in seen if isinstance(a, dict)]
                if isinstance(answer, dict) and counts and answer["busy_seconds"] < counts[-1]:
                    seen.clear()  # Ray restarted it: a new count from zero
                seen.append(answer)

    def _tell(self, answers: dict[tuple[str, int], dict[str, Any] | str]) -> None:
        """One line per replica that went down, came back, or was replaced between two polls."""
        now = time.monotonic()
        for key, answer in answers.items():
            state, pid = ("up", answer.get("pid")) if isinstance(answer, dict) else (answer, None)
            old, old_pid, since = self._state.get(key, ("up", pid, now))
            self._state[key] = (state, pid if state == "up" else old_pid, now if state != old else since)
            if self.say is None:
                continue
            pool, i = key
            if state != "up" and old == "up":
                self.say(
                    f"{pool} replica {i} {'down' if state == 'down' else 'not answering'}; {self._next(key)}"
                )
            elif state == "up" and old != "up":
                self.restarts[key] = self.restarts.get(key, 0) + (pid != old_pid)
                self.say(f"{pool} replica {i} back after {now - since:.0f} s")
            elif state == "up" and pid != old_pid:  # killed and restarted between two polls
                self.restarts[key] = self.restarts.get(key, 0) + 1
                self.say(f"{pool} replica {i} died and Ray restarted it (restart {self.restarts[key]})")

    def _next(self, key: tuple[str, int]) -> str:
        limit, restart = self.max_restarts.get(key[0], -1), self.restarts.get(key, 0) + 1
        if 0 <= limit < restart:
            return "no restart left"
        return f"Ray restarts it (restart {restart}{'' if limit < 0 else f' of {limit}'})"

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Per pool, per replica: ``state`` (up / down / no answer), ``busy`` (fraction of the window, None
        until two answers), ``queue`` (requests there now), ``requests`` (handled so far)."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for (name, i), seen in self.seen.items():
                answers = [a for a in seen if isinstance(a, dict)]
                last = seen[-1] if seen else "no answer"
                row: dict[str, Any] = {"replica": i, "state": "up" if isinstance(last, dict) else last}
                if answers:
                    first, newest = answers[0], answers[-1]
                    span = newest["clock"] - first["clock"]
                    busy = (newest["busy_seconds"] - first["busy_seconds"]) / span if span > 0 else None
                    row.update(
                        busy=None if busy is None else min(1.0, busy),
                        queue=newest["queue"],
                        requests=newest["requests"],
                    )
                out.setdefault(name, []).append(row)
        return out
