"""``treesearch export`` and ``treesearch view``: trees of a run to files a person can open.

treesearch export TREE --format json|graphml|dot|html [-o FILE]
    TREE: trees/<id>.msgpack (one file), or a run dir (every tree; -o is then a directory,
    default RUN_DIR/export/).
treesearch view RUN_DIR [--compare OTHER_RUN_DIR] [-o FILE] [--watch SECONDS]
    one HTML for the run (default RUN_DIR/view.html), side by side with OTHER if given. With
    --watch, while the run is running (its status.json says so) the HTML is rewritten every
    SECONDS with the trees finished so far, and reloads itself in the browser as often; it stops
    (and the page stops reloading) once the run has finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from treesearch.errors import ConfigError
from treesearch.export import to_dot, to_graphml
from treesearch.progress import is_running
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


def watch(
    run_dir: str, compare: str | None, out: str | None, every_s: float, say: Callable[[Path], None] = print
) -> Path:
    """:func:`view` every ``every_s`` seconds while the run is running; the page reloads itself
    as often until the last write (after the run finished), which does not reload."""
    if every_s <= 0:
        raise ConfigError(f"--watch must be > 0 seconds, got {every_s}")
    said = False
    while True:
        live = is_running(Path(run_dir))
        path = view(run_dir, compare, out, refresh_s=every_s if live else None)
        if not said:
            say(path)
            said = True
        if not live:
            return path
        time.sleep(every_s)


def view(run_dir: str, compare: str | None, out: str | None, refresh_s: float | None = None) -> Path:
    """One HTML for the run (and ``compare``); with ``refresh_s`` the page reloads itself."""
    runs = []
    for d in (run_dir, compare):
        if d is None:
            continue
        p = Path(d)
        if not (p / "trees").is_dir() or not (p / "config.yaml").is_file():
            raise ConfigError(f"{p}: not a run dir (needs config.yaml and trees/)")
        runs.append(run_payload(p))
    path = Path(out) if out else Path(run_dir) / "view.html"
    _write(path, render_html(runs, refresh_s))
    return path


def _write(path: Path, text: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory (name an output file)")
    try:  # whole or not at all: a reloading browser never reads half a page
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write it: {e.strerror or e}") from e
