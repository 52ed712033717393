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
from treesearch.export import to_dot, to_graphml
from treesearch.safeio import read_tree_file
from treesearch.viewer import RunData, problem_payload, render_html, run_payload

FORMATS = ("json", "graphml", "dot", "html")


def _run_dir_of(tree_file: Path) -> Path | None:
    d = tree_file.parent.parent
    return d if tree_file.parent.name == "trees" and (d / "config.yaml").is_file() else None


def _render(data: RunData, tree_file: Path, fmt: str) -> str:
    tree = read_tree_file(tree_file)
    doc = data.doc(tree)
    if fmt == "json":
        return json.dumps(doc, indent=1) + "\n"
    if fmt == "graphml":
        return to_graphml(doc) + "\n"
    if fmt == "dot":
        return to_dot(doc)
    name = data.run_dir.name if data.run_dir else tree_file.stem
    return render_html([data.run(name, [problem_payload(doc, data.rows.get(tree.problem_id))])])


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
        if dest.exists() and not dest.is_dir():
            raise ConfigError(
                f"-o {dest}: exists and is not a directory (a run dir exports one file per tree)"
            )
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"-o {dest}: cannot create it: {e.strerror or e}") from e
        data = RunData(src)
        written = []
        for t in trees:
            path = dest / f"{t.stem}.{fmt}"
            _write(path, _render(data, t, fmt))
            written.append(path)
        return written
    if not src.is_file():
        raise ConfigError(f"{src}: no such tree file or run dir")
    path = Path(out) if out else src.with_suffix(f".{fmt}")
    _write(path, _render(RunData(_run_dir_of(src)), src, fmt))
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
    _write(path, render_html(runs))
    return path


def _write(path: Path, text: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory (name an output file)")
    try:
        path.write_text(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write it: {e.strerror or e}") from e
