"""Tree export: JSON round trip, GraphML through networkx, DOT through pydot, and the HTML
viewer driven in real headless Chromium (Debian's chromium + Playwright)."""

import json
import re
import shutil
from pathlib import Path

import networkx as nx
import pydot
import pytest
from playwright.sync_api import sync_playwright

from treesearch.cli import main
from treesearch.export import to_dot, to_graphml, to_json_doc, tree_from_json_doc
from treesearch.tree import Step, Tree, trees_equal
from treesearch.viewer import problem_payload, render_html

from .helpers import slow_run
from .test_cli import CONFIGS

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
XSS = ("<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mcts"
    assert main(["run", str(CONFIGS / "game24-mcts.yaml"), "--in-process", "--quiet", "--limit", "4",
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def _tree(run_dir) -> Path:
    return sorted((run_dir / "trees").glob("*.msgpack"))[0]


def test_json_round_trip_is_exact(run_dir, tmp_path, capsys):
    src = _tree(run_dir)
    assert main(["export", str(src), "--format", "json", "-o", str(tmp_path / "t.json")]) == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    tree = Tree.from_msgpack(src.read_bytes())
    assert trees_equal(tree_from_json_doc(doc), tree)
    assert doc["version"] == 1 and doc["problem"]["id"] == tree.problem_id
    row = next(json.loads(x) for x in (run_dir / "results.jsonl").read_text().splitlines()
               if json.loads(x)["id"] == tree.problem_id)  # fmt: skip
    assert doc["result"]["answer_node"] == row["answer_node"]
    terminals = [x for x in doc["nodes"] if x["status"] == "terminal"]
    assert terminals and all(isinstance(x["correct"], bool) for x in terminals)
    assert any(x["correct"] for x in terminals) == row["covered"]
    assert {"uct", "value", "prior", "logprob", "created_step", "replica", "tokens"} <= doc["nodes"][1].keys()


def test_graphml_reads_back_with_networkx(run_dir, tmp_path):
    src = _tree(run_dir)
    doc = to_json_doc(Tree.from_msgpack(src.read_bytes()))
    path = tmp_path / "t.graphml"
    path.write_text(to_graphml(doc))
    g = nx.read_graphml(path)
    assert g.number_of_nodes() == len(doc["nodes"]) and g.number_of_edges() == len(doc["nodes"]) - 1
    n1 = g.nodes["1"]
    assert n1["step"] == doc["nodes"][1]["step"] and n1["visits"] == doc["nodes"][1]["visits"]
    assert (
        isinstance(n1["visits"], int) and isinstance(n1["prior"], float) and isinstance(n1["correct"], bool)
    )


def test_dot_parses(run_dir):
    tree = Tree.from_msgpack(_tree(run_dir).read_bytes())
    tree.step_text[1] = 'a "quoted" \\ step'  # escaping
    doc = to_json_doc(tree)
    (graph,) = pydot.graph_from_dot_data(to_dot(doc))
    assert len(graph.get_edges()) == len(tree) - 1
    assert len([n for n in graph.get_nodes() if re.fullmatch(r"n\d+", n.get_name())]) == len(tree)


def test_run_dir_export_and_errors(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--format", "dot", "-o", str(tmp_path / "all")]) == 0
    assert len(list((tmp_path / "all").glob("*.dot"))) == 4
    assert main(["export", str(run_dir), "--format", "png"]) == 2
    assert "expected one of json, graphml, dot, html" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.msgpack"), "--format", "json"]) == 2
    assert main(["view", str(tmp_path)]) == 2


def _xss_tree() -> tuple[Tree, dict]:
    tree = Tree("1 2 3 4\n", problem_id="xss")
    a, b = tree.add_children(0, [Step(XSS[0], (1,), -0.1), Step(XSS[1], (2,), -0.2)])
    (c,) = tree.add_children(a, [Step("4 * 3 = 12 (left: 1 2 12)", (3,), -0.3)])
    (d,) = tree.add_children(c, [Step("12 * 2 = 24 (left: 1 24)", (4,), -0.1, terminal=True)])
    for n, s in ((a, 0.9), (b, 0.1), (c, 0.8), (d, 0.95)):
        tree.prm_score[n] = s
    tree.answer[d] = "<b>24</b>"
    doc = to_json_doc(tree, {"answer": "<b>24</b>", "answer_node": d, "correct": False})
    return tree, doc


@pytest.fixture(scope="module")
def browser(uses_browser):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (make test installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, html: str, tmp_path: Path, fragment: str = ""):
    path = tmp_path / "view.html"
    path.write_text(html)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "request", lambda r: errors.append(f"network: {r.url}") if not r.url.startswith("file:") else None
    )
    page.goto(f"file://{path}{fragment}")
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def test_viewer_in_chromium(browser, run_dir, tmp_path):
    from treesearch.export_cli import view

    html_path = view(str(run_dir), str(run_dir), str(tmp_path / "view.html"))
    page, errors = _open(browser, html_path.read_text(), tmp_path)
    links = page.locator("a.problem-link")
    assert links.count() == 4
    links.first.click()
    page.wait_for_selector("svg.tree circle.node")
    assert page.locator(".panel").count() == 2  # side by side
    panel = page.locator(".panel").first
    circles = panel.locator("circle.node")
    visible = int(panel.locator(".visible-count").get_attribute("data-visible"))
    assert circles.count() == visible > 10
    node = panel.locator("circle.node.chosen").last
    node.click()
    details = panel.locator(".details")
    step = node.locator("title").text_content()
    assert f"step: {step}" in details.text_content() and step in panel.locator("pre.prefix").text_content()
    slider = panel.locator("input.replay")
    slider.evaluate("(e) => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
    early = int(panel.locator(".visible-count").get_attribute("data-visible"))
    assert 1 < early < visible  # the first expansion only
    slider.evaluate("(e) => { e.value = e.max; e.dispatchEvent(new Event('input')); }")
    assert int(panel.locator(".visible-count").get_attribute("data-visible")) == visible
    panel.locator("button.toggle").click()  # collapse the clicked node's subtree, if it has one
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"))
    assert errors == []


def test_model_text_is_escaped_everywhere(browser, tmp_path):
    _, doc = _xss_tree()
    problem = problem_payload(doc, {"answer": "<b>24</b>", "answer_node": 4})
    problem["id"] = "x</script><script>window.__pwned=3</script>"
    run = {"name": "<i>run</i>", "algorithm": "beam", "accuracy": 0, "coverage": 0, "problems": [problem]}
    page, errors = _open(browser, render_html([run]), tmp_path)
    assert "x</script><script>window.__pwned=3</script>" in page.locator("a.problem-link").text_content()
    page.locator("a.problem-link").click()
    page.wait_for_selector("svg.tree circle.node")
    for i in (1, 2):
        page.locator(f"circle.node[data-id='{i}']").click()
        assert XSS[i - 1] in page.locator(".details").text_content()
    assert page.evaluate("window.__pwned") is None  # nothing ran
    assert page.locator("main img").count() == 0 and page.locator("main b").count() == 0
    assert errors == []


def test_a_live_view_shows_new_trees_as_a_running_job_finishes_them(browser, tmp_path):
    """`treesearch view RUN_DIR --watch` beside a run that is still writing: the page (real
    Chromium) reloads itself and shows trees that finished after it was opened; once the run
    has finished, the last page written no longer reloads."""
    import subprocess
    import sys
    import time

    out = tmp_path / "live"
    run = slow_run(str(CONFIGS / "game24-mcts.yaml"), out, limit=8, latency_s=0.5)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "treesearch.cli", "view", str(out), "--watch", "2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    path = Path(watcher.stdout.readline().strip())
    assert path == out / "view.html" and 'http-equiv="refresh"' in path.read_text()
    page = browser.new_page()
    page.goto(f"file://{path}")
    page.wait_for_selector("body[data-ready='1']")
    first = page.locator("a.problem-link").count()
    assert 1 <= first < 8
    deadline = time.time() + 120
    seen = first
    while time.time() < deadline and seen <= first:  # the page reloads itself; no action here
        page.wait_for_timeout(300)
        try:
            seen = page.locator("a.problem-link").count()
        except Exception:  # between two loads
            continue
    assert seen > first
    assert run.wait(timeout=300) == 0 and watcher.wait(timeout=60) == 0  # the watch ends with the run
    assert 'http-equiv="refresh"' not in path.read_text()  # the final page stays put
    page.goto(f"file://{path}")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("a.problem-link").count() == 8


def test_a_big_tree_zooms_pans_and_finds_a_node_below_the_depth_limit(browser, tmp_path):
    """A 4,000-node tree opens cut at depth 4; a search for a deep node's text reveals its path
    (whatever the depth limit), selects and centres it; + zooms the drawing by 1.25 without a
    new layout, fit brings the whole width into view; a drag on the canvas pans it."""
    from benchmarks.viewer_render import page_for, synthetic_tree

    tree = synthetic_tree(4000)
    deep = next(i for i in range(len(tree)) if tree.depth[i] == 8)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"file://{page_for(tree)}#p={tree.problem_id}")
    page.wait_for_selector("svg.tree circle.node")
    assert page.locator(f"circle.node[data-id='{deep}']").count() == 0  # below the depth limit
    text = tree.step_text[deep]
    hits = [i for i in range(1, len(tree)) if text.lower() in tree.step_text[i].lower()]
    box = page.locator("input.search")
    box.fill(text.upper())  # case does not matter
    for _ in range(hits.index(deep) + 1):  # Enter walks the hits in node order
        box.press("Enter")
    assert page.locator("circle.node.selected").get_attribute("data-id") == str(deep)
    assert page.locator(".search-count").text_content() == f"{hits.index(deep) + 1} / {len(hits)}"
    for n in tree.path(deep):  # its whole path is drawn
        assert page.locator(f"circle.node[data-id='{n}']").count() == 1
    assert f"step: {text}" in page.locator(".details").text_content()
    svg = page.locator("svg.tree")
    width = float(svg.get_attribute("width"))
    page.locator("button.zoom-in").click()
    assert abs(float(svg.get_attribute("width")) - 1.25 * width) <= 1
    canvas = page.locator(".canvas")
    before = canvas.evaluate("c => c.scrollLeft")
    dx = 200 if before > 300 else -200  # towards where there is room to scroll
    b = canvas.bounding_box()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + 3)  # the top margin: no node there
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] / 2 + dx, b["y"] + 3, steps=4)
    page.mouse.up()
    assert abs(canvas.evaluate("c => c.scrollLeft") - (before - dx)) <= 1
    page.locator("button.zoom-fit").click()
    assert float(svg.get_attribute("width")) <= canvas.evaluate("c => c.clientWidth")
    # every node laid out, only those near the viewport drawn; a long pan draws the next ones
    page.locator("button.zoom-in").click()
    page.select_option("select.depth-limit", "all")
    count = page.locator(".visible-count")
    assert count.get_attribute("data-visible") == "4000"
    assert page.locator("circle.node").count() == int(count.get_attribute("data-drawn")) < 4000
    seen = set(page.locator("circle.node").evaluate_all("cs => cs.map(c => c.dataset.id)"))
    canvas.evaluate("c => { c.scrollLeft = c.scrollWidth - c.clientWidth; }")
    page.wait_for_function(f"!document.querySelector('circle.node[data-id=\"{next(iter(seen))}\"]')")
    assert set(page.locator("circle.node").evaluate_all("cs => cs.map(c => c.dataset.id)")) - seen
    assert errors == []
