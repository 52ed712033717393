"""A self-contained HTML viewer for search trees (no network: JS and CSS inline).

``render_html`` embeds the runs' trees as JSON in a ``<script type="application/json">`` block
(``<`` escaped, so step text cannot close it) and the template (``viewer.html``) renders them
with DOM APIs only: model text is set through ``textContent``, never ``innerHTML``.

Pages: an index of problems (answer / correct / nodes / tokens per run, linking to each tree);
a tree page, side by side when two runs are given: top-down layout, colour by PRM score, the
chosen answer's path and correct finished chains highlighted, click for details and the full
prefix, a replay slider over creation order, collapse by subtree or depth (big trees open at
depth <= 4) and only visible nodes drawn.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from treesearch.export import to_json_doc
from treesearch.safeio import read_tree_file
from treesearch.tree import Tree


def tree_payload(doc: dict[str, Any]) -> dict[str, list]:
    """Parallel arrays (compact for 10^4-node trees) from an export document."""
    nodes = doc["nodes"]
    keys = {
        "parent": "parent", "depth": "depth", "step": "step", "prm": "prm_score", "visits": "visits",
        "value": "value", "uct": "uct", "prior": "prior", "logprob": "logprob", "tokens": "tokens",
        "status": "status", "created": "created_step", "replica": "replica", "answer": "answer",
        "correct": "correct",
    }  # fmt: skip
    return {short: [x[long] for x in nodes] for short, long in keys.items()}


def problem_payload(doc: dict[str, Any], row: dict[str, Any] | None) -> dict[str, Any]:
    row = row or {}
    tokens = row.get("ledger", {}).get("policy_generated_tokens", sum(x["tokens"] for x in doc["nodes"][1:]))
    return {
        "id": doc["problem"]["id"],
        "answer": row.get("answer"),
        "correct": bool(row.get("correct")),
        "nodes": len(doc["nodes"]) - 1,
        "tokens": tokens,
        "chosen": row.get("answer_node"),
        "tree": tree_payload(doc),
    }


class RunData:
    """What every tree of one run dir shares, read once: results rows, summary, and a
    ground-truth check of finished chains. ``run_dir=None``: a lone tree file."""

    def __init__(self, run_dir: Path | None):
        self.run_dir = run_dir
        self.rows: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}
        self.checker = None
        if run_dir is None:
            return
        from treesearch.config import JobConfig
        from treesearch.safeio import iter_rows, read_json, read_yaml

        results = run_dir / "results.jsonl"
        if results.is_file():
            for _, row in iter_rows(results):
                self.rows[row["id"]] = row
        if (run_dir / "summary.json").is_file():
            self.summary = read_json(run_dir / "summary.json")
        from treesearch.schema import build

        self.checker = correctness_checker(build(JobConfig, read_yaml(run_dir / "config.yaml"), "")) or (
            lambda tree: None
        )

    def doc(self, tree: Tree) -> dict[str, Any]:
        return to_json_doc(tree, self.rows.get(tree.problem_id), self.checker(tree) if self.checker else None)

    def run(self, name: str, problems: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "algorithm": self.summary.get("algorithm", "?"),
            "accuracy": self.summary.get("accuracy", 0.0),
            "coverage": self.summary.get("coverage", 0.0),
            "problems": problems,
        }


def run_payload(run_dir: Path, name: str | None = None) -> dict[str, Any]:
    """Every tree of a run dir, with its results row and a ground-truth check of terminals."""
    data = RunData(run_dir)
    problems = []
    for f in sorted((run_dir / "trees").glob("*.msgpack")):
        tree = read_tree_file(f)
        problems.append(problem_payload(data.doc(tree), data.rows.get(tree.problem_id)))
    return data.run(name or run_dir.name, problems)


def correctness_checker(cfg):
    """tree -> (steps -> correct) for the run's task, from the prompt (Game of 24: the numbers);
    None for tasks whose ground truth is not in the tree."""
    from treesearch.tasks.game24 import Game24

    if cfg.task.name != "game24":
        return None
    task = Game24(cfg.task.split, cfg.task.integer_only, cfg.task.csv_path)

    def for_tree(tree: Tree):
        problem = Game24.problem([int(x) for x in tree.step_text[0].split()])
        return lambda steps: task.is_correct(problem, steps)

    return for_tree


def render_html(runs: list[dict[str, Any]], refresh_s: float | None = None) -> str:
    """The viewer page for ``runs``; with ``refresh_s`` it reloads itself that often (a live run)."""
    template = resources.files("treesearch").joinpath("viewer.html").read_text()
    data = json.dumps({"runs": runs}, separators=(",", ":")).replace("<", "\\u003c")
    page = template.replace("__TREESEARCH_DATA__", data)
    if refresh_s is not None:
        page = page.replace(
            '<meta charset="utf-8">',
            f'<meta charset="utf-8">\n<meta http-equiv="refresh" content="{refresh_s:g}">',
            1,
        )
    return page
