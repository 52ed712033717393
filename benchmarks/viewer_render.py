"""How long a 10,000-node tree takes to open and render in the HTML viewer (headless Chromium).

Builds a synthetic search tree (branching 1-6, depth <= 9, scored, with a chosen path), writes
the self-contained HTML, and times in Chromium: page load to first render (the default view of
a big tree: depth <= 4), and a render of every node (all depths). Median of --repeats runs.

    .venv/bin/python -m benchmarks.viewer_render [--nodes 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from treesearch.export import to_json_doc
from treesearch.tree import Step, Tree
from treesearch.viewer import problem_payload, render_html

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def synthetic_tree(n: int, seed: int = 0) -> Tree:
    rng = random.Random(seed)
    tree = Tree("4 5 6 10\n", problem_id=f"synthetic-{n}")
    frontier = [0]
    while len(tree) < n:
        parent = frontier.pop(rng.randrange(len(frontier)))
        k = min(rng.randint(1, 6), n - len(tree))
        terminal = tree.depth[parent] >= 8
        steps = [
            Step(
                f"{rng.randint(1, 13)} * {rng.randint(1, 13)} = x (left: 1 2)",
                (1,) * 20,
                -rng.random(),
                terminal,
            )
            for _ in range(k)
        ]
        for child in tree.add_children(parent, steps):
            tree.prm_score[child] = rng.random()
            tree.backup(child, tree.prm_score[child])
            if tree.depth[child] < 9 and not steps[0].terminal:
                frontier.append(child)
        if not frontier:
            frontier = [rng.randrange(len(tree))]
    return tree


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="500 nodes, once: checks the script works")
    args = ap.parse_args()
    if args.smoke:
        args.nodes, args.repeats = 500, 1
    tree = synthetic_tree(args.nodes)
    doc = to_json_doc(tree, {"answer": "24", "answer_node": len(tree) - 1, "correct": True})
    run = {"name": "bench", "algorithm": "synthetic", "accuracy": 1.0, "coverage": 1.0,
           "problems": [problem_payload(doc, {"answer": "24", "answer_node": len(tree) - 1})]}  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "view.html"
    path.write_text(render_html([run]))
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (make test installs it)")
    opens, full = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        for _ in range(args.repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            t0 = time.perf_counter()
            page.goto(f"file://{path}#p={tree.problem_id}")
            page.wait_for_selector("svg.tree circle.node")
            opens.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            page.select_option("select.depth-limit", "all")
            page.wait_for_function(
                f"document.querySelector('.visible-count').dataset.visible == '{len(tree)}'"
            )
            full.append(time.perf_counter() - t1)
            page.close()
        browser.close()
    size = path.stat().st_size / 1e6
    print(f"{'nodes':>8} {'html MB':>8} {'open+render s':>14} {'render all s':>13}")
    print(f"{len(tree):>8} {size:>8.2f} {statistics.median(opens):>14.3f} {statistics.median(full):>13.3f}")
    print(f"ratio: open+render median / 3 s target = {statistics.median(opens) / 3.0:.2f}")


if __name__ == "__main__":
    main()
