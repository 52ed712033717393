"""``treesearch export`` and ``treesearch view``: trees of a run to files a person can open.

treesearch export TREE --format json|graphml|dot|html [-o FILE]
    TREE: trees/<id>.msgpack (one file), or a run dir (every tree; -o is then a directory,
    default RUN_DIR/export/).
treesearch view RUN_DIR [--compare OTHER_RUN_DIR] [-o FILE]
    one HTML for the run (default RUN_DIR/view.html), side by side with OTHER if given.
"""

from __future__ import annotations

import json
from pathlib import Path

from treesearch.config import ConfigError
from treesearch.export import to_dot, to_graphml, to_json_doc
from treesearch.tree import Tree
from treesearch.viewer import problem_payload, render_html, run_payload

FORMATS = ("json", "graphml", "dot", "html")


def _run_dir_of(tree_file: Path) -> Path | None:
    d = tree_file.parent.parent
    return d if tree_file.parent.name == "trees" and (d / "config.yaml").is_file() else None


def _render(tree_file: Path, fmt: str) -> str:
    try:
        tree = Tree.from_msgpack(tree_file.read_bytes())
    except Exception as e:  # a truncated or foreign file
        raise ConfigError(f"{tree_file}: not a treesearch tree ({e})") from e
    run_dir = _run_dir_of(tree_file)
    if run_dir is not None:  # with its run: result row, ground truth of finished chains
        run = run_payload(run_dir)
        problem = next(p for p in run["problems"] if p["id"] == tree.problem_id)
        row = _row(run_dir, tree.problem_id)
        import yaml

        from treesearch.config import JobConfig, build
        from treesearch.viewer import _checker

        checker = _checker(build(JobConfig, yaml.safe_load((run_dir / "config.yaml").read_text()), ""))
        doc = to_json_doc(tree, row, checker(tree))
        single = {**run, "problems": [problem]}
    else:
        doc = to_json_doc(tree)
        single = {"name": tree_file.stem, "algorithm": "?", "accuracy": 0.0, "coverage": 0.0,
                  "problems": [problem_payload(doc, None)]}  # fmt: skip
    if fmt == "json":
        return json.dumps(doc, indent=1) + "\n"
    if fmt == "graphml":
        return to_graphml(doc) + "\n"
    if fmt == "dot":
        return to_dot(doc)
    return render_html([single])


def _row(run_dir: Path, problem_id: str) -> dict | None:
    path = run_dir / "results.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip() and (r := json.loads(line))["id"] == problem_id:
            return r
    return None


def export(target: str, fmt: str, out: str | None) -> list[Path]:
    """Writes the export(s); returns the paths written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    src = Path(target)
    if src.is_dir():
        trees = sorted((src / "trees").glob("*.msgpack"))
        if not trees:
            raise ConfigError(f"{src}: no trees/*.msgpack (is it a run dir?)")
        dest = Path(out) if out else src / "export"
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for t in trees:
            path = dest / f"{t.stem}.{fmt}"
            path.write_text(_render(t, fmt))
            written.append(path)
        return written
    if not src.is_file():
        raise ConfigError(f"{src}: no such tree file or run dir")
    path = Path(out) if out else src.with_suffix(f".{fmt}")
    path.write_text(_render(src, fmt))
    return [path]


def view(run_dir: str, compare: str | None, out: str | None) -> Path:
    runs = []
    for d in (run_dir, compare):
        if d is None:
            continue
        p = Path(d)
        if not (p / "trees").is_dir() or not (p / "config.yaml").is_file():
            raise ConfigError(f"{p}: not a run dir (needs config.yaml and trees/)")
        runs.append(run_payload(p))
    path = Path(out) if out else Path(run_dir) / "view.html"
    path.write_text(render_html(runs))
    return path
