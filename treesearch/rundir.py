"""The run directory: the output contract, and checkpoint / resume.

  config.yaml          the resolved config
  run.json             config hash and one entry per session (started, wall seconds, problems run)
  results.jsonl        one line per finished problem, appended and flushed as each finishes
  summary.json         totals over every finished problem (rewritten at the end of each session)
  trees/<id>.msgpack   each finished problem's tree (written before its results line)

A run is checkpointed by construction: a problem is finished iff its line is in
``results.jsonl``. Resuming skips finished problems and re-runs those that were in flight (their
partial compute is not in the ledger: the ledger counts finished problems only, so nothing is
counted twice). A torn last line, left by a kill mid-write, is discarded. Resuming with a
config whose hash differs (operational fields such as concurrency and resources excepted) is
refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from treesearch.errors import ConfigError
from treesearch.safeio import MAX_ROW_BYTES, iter_rows, read_json, read_yaml

# Fields that change how a run executes, not what it computes.
OPERATIONAL = {
    "run": ("concurrency", "in_process", "ray_num_cpus", "search_workers", "lease", "max_failed_fraction"),
    "generator": ("resources", "latency_s"),
    "prm": ("resources", "latency_s"),
}


def config_hash(resolved: dict[str, Any]) -> str:
    """The hash of a resolved config (``Job.to_dict()``) without its operational fields."""
    d = json.loads(json.dumps(resolved, default=str))  # a deep copy
    for section, keys in OPERATIONAL.items():
        for k in keys:
            d[section].pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [path]


class RunDir:
    """Writes (and, with ``resume``, continues) a run directory."""

    def __init__(self, out: Path, job: Any, resume: bool = False):
        """``job``: a :class:`treesearch.job.Job` (its resolved config is recorded)."""
        resolved = job.to_dict()
        self.out, self.save_trees = out, job.cfg.run.save_trees
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        self.hash = config_hash(resolved)
        meta_path = out / "run.json"
        existing = meta_path.is_file() or (out / "results.jsonl").is_file()
        if existing and not resume:
            raise ConfigError(
                f"{out} holds a run already: pass --resume to continue it, or choose another --out"
            )
        self.meta: dict[str, Any] = {"config_hash": self.hash, "sessions": []}
        self.finished: dict[str, str] = {}  # id -> status of its latest row (not the rows: 10^5 of them)
        if existing:
            self.meta = read_json(meta_path) if meta_path.is_file() else self.meta
            _check_meta(self.meta, meta_path)
            if self.meta["config_hash"] != self.hash:
                old = read_yaml(out / "config.yaml") if (out / "config.yaml").is_file() else {}
                changed = [p for p in _diff(old, resolved) if p.split(".")[-1] not in _operational_keys()]
                raise ConfigError(
                    f"cannot resume {out}: its config differs in {', '.join(changed) or 'its hash'} "
                    f"(run {self.meta['config_hash']}, now {self.hash})"
                )
            self.finished = self._read_finished()
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
            if self.save_trees:
                (out / "trees").mkdir(exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot write there: {e.strerror or e}") from e
        self.session = {
            "started": time.time(),
            "wall_seconds": 0.0,
            "problems_run": 0,
            "skipped": len(self.finished),
        }
        self.meta["sessions"].append(self.session)
        self._write_meta()
        self._results: TextIO = (out / "results.jsonl").open("a")

    def _read_finished(self) -> dict[str, str]:
        path = self.out / "results.jsonl"
        if not path.is_file():
            return {}
        finished, good_end = {}, 0
        for _, row in iter_rows(path):
            finished[row["id"]] = row.get("status", "ok")
        with path.open("rb") as f:  # a torn last line (killed mid-write) is cut off
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - MAX_ROW_BYTES - 1))
            tail = f.read()
            good_end = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        if good_end != size:
            with path.open("r+b") as f:
                f.truncate(good_end)
        return finished

    def rows(self, ids: set[str] | None = None) -> Iterator[dict[str, Any]]:
        """The latest row of each finished problem (of ``ids``), streamed from ``results.jsonl``
        in two passes (a re-run problem has several lines; the last one counts)."""
        path = self.out / "results.jsonl"
        if not path.is_file():
            return
        latest = {row["id"]: i for i, row in iter_rows(path)}
        for i, row in iter_rows(path):
            if latest[row["id"]] == i and (ids is None or row["id"] in ids):
                yield row

    def _write_meta(self) -> None:
        tmp = self.out / ".run.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2) + "\n")
        tmp.replace(self.out / "run.json")

    def problem_done(self, row: dict[str, Any], tree_bytes: bytes | None) -> None:
        if self.save_trees and tree_bytes is not None:
            # whole or not at all: a live viewer reads trees/ while the run writes it
            tmp = self.out / "trees" / f".{row['id']}.msgpack.tmp"
            tmp.write_bytes(tree_bytes)
            tmp.replace(self.out / "trees" / f"{row['id']}.msgpack")
        self._results.write(json.dumps(row) + "\n")
        self._results.flush()
        self.finished[row["id"]] = row.get("status", "ok")
        self.session["problems_run"] += 1

    def finish(self, summary: dict[str, Any], session_wall_seconds: float) -> None:
        self._results.close()
        self.session["wall_seconds"] = session_wall_seconds
        self._write_meta()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    @property
    def wall_seconds(self) -> float:
        return sum(s["wall_seconds"] for s in self.meta["sessions"])


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    sessions = meta.get("sessions")
    ok = isinstance(meta.get("config_hash"), str) and isinstance(sessions, list)
    if not ok or not all(
        isinstance(s, dict) and isinstance(s.get("wall_seconds", 0.0), int | float) for s in sessions
    ):
        raise ConfigError(f"{path}: not a run.json this tool wrote (config_hash, sessions)")


def _operational_keys() -> set[str]:
    return {k for keys in OPERATIONAL.values() for k in keys}
