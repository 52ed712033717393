"""The service's run dir: every answered (or cancelled) request's row and tree, as a batch
run writes them, so ``treesearch status``, ``watch`` and ``view`` work on a running service."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from treesearch.progress import Progress
from treesearch.tree import Tree

if TYPE_CHECKING:
    from treesearch.service import Outcome


class RunStore:
    """The service's run dir: ``results.jsonl`` (a row per request), ``trees/<tree_id>.msgpack``
    and a live ``status.json``; past ``retain`` requests the oldest trees are deleted (and the
    rows of ``results.jsonl`` cut to the newest ``retain`` when it holds twice as many)."""

    def __init__(self, out: Path, retain: int, config: dict[str, Any]):
        self.out, self.retain = out, retain
        (out / "trees").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # the viewer reads the task
        self.rows: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.lines = 0
        self.progress = Progress(0, 0, None, out / "status.json", open_ended=True)

    def has(self, tree_id: str) -> bool:
        return tree_id in self.rows and (self.out / "trees" / f"{tree_id}.msgpack").is_file()

    def get(self, tree_id: str) -> tuple[Tree, dict[str, Any]]:
        return Tree.from_msgpack((self.out / "trees" / f"{tree_id}.msgpack").read_bytes()), self.rows[tree_id]

    def write(self, outcome: Outcome) -> None:
        row = {
            **outcome.result.to_json(),
            "model": outcome.profile.name,
            "algorithm": outcome.algorithm,
            "stop_reason": outcome.stopped,
        }
        tmp = self.out / "trees" / f".{outcome.request_id}.tmp"
        tmp.write_bytes(outcome.tree.to_msgpack())
        tmp.replace(self.out / "trees" / f"{outcome.request_id}.msgpack")
        with (self.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.lines += 1
        self.rows[outcome.request_id] = row
        while len(self.rows) > self.retain:
            old, _ = self.rows.popitem(last=False)
            (self.out / "trees" / f"{old}.msgpack").unlink(missing_ok=True)
        if self.lines > 2 * self.retain:  # keep the newest rows
            lines = (self.out / "results.jsonl").read_text().splitlines()[-self.retain :]
            tmp = self.out / ".results.jsonl.tmp"
            tmp.write_text("".join(line + "\n" for line in lines))
            tmp.replace(self.out / "results.jsonl")
            self.lines = len(lines)
        self.progress.update(row)
