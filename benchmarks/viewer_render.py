"""Whether a 10,000-node tree stays usable in the HTML viewer (headless Chromium).

Builds synthetic search trees (branching 1-6, depth <= 9, scored, with a chosen path) of
``--small`` and ``--nodes`` nodes, writes the self-contained HTML, and times in Chromium, side
by side: page load to first render (the default view of a big tree: depth <= 4); a render of
every node (all depths); then, with every node drawn, one zoom step (the ``+`` button), one pan
(a 300 px pointer drag on the canvas) and one search jump (text typed, Enter: the hit is
revealed, selected and centred). Each interaction is timed in the page from its input event
to the second animation frame after it (the frame that shows it). Medians of --repeats runs;
the ratio line compares the big tree's interactions with 100 ms (the response budget within
which an action feels immediate; RAIL).

    .venv/bin/python -m benchmarks.viewer_render [--nodes 10000] [--small 500] [--repeats 5]
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


FRAME = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
ZOOM = f"""async () => {{
  const t0 = performance.now();
  document.querySelector('button.zoom-in').click();
  await {FRAME};
  return performance.now() - t0;
}}"""
PAN = f"""async () => {{
  const c = document.querySelector('.canvas'), box = c.getBoundingClientRect();
  const x = box.left + box.width / 2, y = box.top + 5, before = c.scrollLeft;
  const t0 = performance.now();
  c.dispatchEvent(new PointerEvent('pointerdown', {{clientX: x, clientY: y, button: 0, bubbles: true}}));
  c.dispatchEvent(new PointerEvent('pointermove', {{clientX: x - 300, clientY: y, bubbles: true}}));
  c.dispatchEvent(new PointerEvent('pointerup', {{clientX: x - 300, clientY: y, bubbles: true}}));
  await {FRAME};
  if (c.scrollLeft === before) throw new Error('the drag did not pan');
  return performance.now() - t0;
}}"""
SEARCH = f"""async (text) => {{
  const box = document.querySelector('input.search');
  const t0 = performance.now();
  box.value = text;
  box.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter', bubbles: true}}));
  await {FRAME};
  if (!document.querySelector('circle.node.selected')) throw new Error('no hit selected');
  return performance.now() - t0;
}}"""


def measure(browser, path: Path, tree: Tree, repeats: int) -> dict[str, float]:
    """Medians (seconds for opening and rendering, ms for interactions) of ``repeats`` runs."""
    deepest = max(range(len(tree)), key=tree.depth.__getitem__)
    times: dict[str, list[float]] = {"open": [], "all": [], "zoom": [], "pan": [], "search": []}
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        t0 = time.perf_counter()
        page.goto(f"file://{path}#p={tree.problem_id}")
        page.wait_for_selector("svg.tree circle.node")
        times["open"].append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        page.select_option("select.depth-limit", "all")
        page.wait_for_function(f"document.querySelector('.visible-count').dataset.visible == '{len(tree)}'")
        times["all"].append(time.perf_counter() - t1)
        times["zoom"].append(page.evaluate(ZOOM))
        times["pan"].append(page.evaluate(PAN))
        times["search"].append(page.evaluate(SEARCH, tree.step_text[deepest]))
        page.close()
    return {k: statistics.median(v) for k, v in times.items()}


def page_for(tree: Tree) -> Path:
    doc = to_json_doc(tree, {"answer": "24", "answer_node": len(tree) - 1, "correct": True})
    run = {"name": "bench", "algorithm": "synthetic", "accuracy": 1.0, "coverage": 1.0,
           "problems": [problem_payload(doc, {"answer": "24", "answer_node": len(tree) - 1})]}  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "view.html"
    path.write_text(render_html([run]))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=500, help="the tree the big one is compared with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="500 and 1,000 nodes, once: checks the script works")
    args = ap.parse_args()
    if args.smoke:
        args.nodes, args.small, args.repeats = 1000, 500, 1
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (make test installs it)")
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        for n in (args.small, args.nodes):
            tree = synthetic_tree(n)
            path = page_for(tree)
            rows.append((len(tree), path.stat().st_size / 1e6, measure(browser, path, tree, args.repeats)))
        browser.close()
    heads = ("nodes", "html MB", "open+render s", "render all s", "zoom ms", "pan ms", "search ms")
    print("  ".join(f"{h:>13}" for h in heads))
    for n, size, m in rows:
        cells = (f"{n}", f"{size:.2f}", f"{m['open']:.3f}", f"{m['all']:.3f}", f"{m['zoom']:.1f}",
                 f"{m['pan']:.1f}", f"{m['search']:.1f}")  # fmt: skip
        print("  ".join(f"{c:>13}" for c in cells))
    (small, _, a), (big, _, b) = rows
    print(f"ratio: open+render {big} nodes / 3 s target = {b['open'] / 3.0:.2f}")
    print(f"ratio: {big} / {small} nodes: zoom {b['zoom'] / a['zoom']:.1f}x, pan {b['pan'] / a['pan']:.1f}x, "
          f"search {b['search'] / a['search']:.1f}x")  # fmt: skip
    worst = max(b["zoom"], b["pan"], b["search"])
    print(f"ratio: slowest interaction at {big} nodes / 100 ms = {worst / 100:.2f}")


if __name__ == "__main__":
    main()
