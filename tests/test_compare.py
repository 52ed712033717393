"""``treesearch compare`` bookkeeping on deterministic in-process backends."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from treesearch import compare
from treesearch.cli import main
from treesearch.config import load_config
from treesearch.errors import ConfigError

from .test_cli import CONFIGS

ALGOS = ("best_of_n", "beam", "mcts")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    argv = [
        "compare", str(CONFIGS / "game24-beam.yaml"), "--in-process", "--algorithms", ",".join(ALGOS),
        "--budgets", "400,1600", "--seeds", "2", "--limit", "8", "--out", str(out),
        "--params", "mcts.simulations=32",
    ]  # fmt: skip
    assert main(argv) == 0
    return out, argv


def _csv_rows(out):
    with (out / "comparison.csv").open() as f:
        return list(csv.DictReader(f))


def test_grid_rows_csv_and_json_agree(grid):
    out, _ = grid
    rows = _csv_rows(out)
    data = json.loads((out / "comparison.json").read_text())
    assert len(rows) == len(data["rows"]) == len(ALGOS) * 2 * 2
    assert list(rows[0]) == data["columns"] == list(compare.COLUMNS)
    for c, j in zip(rows, data["rows"], strict=True):
        for k in compare.COLUMNS:
            assert (float(c[k]) == pytest.approx(j[k])) if isinstance(j[k], float) else c[k] == str(j[k])
    assert {(r["algorithm"], float(r["budget"]), int(r["seed"])) for r in rows} == {
        (a, b, s) for a in ALGOS for b in (400.0, 1600.0) for s in (0, 1)
    }


def test_realised_compute_within_budget_and_coverage_at_least_accuracy(grid):
    out, _ = grid
    for r in json.loads((out / "comparison.json").read_text())["rows"]:
        assert r["problems"] == 8
        assert 0 < r["realised_max"] <= r["budget"] and r["realised_mean"] <= r["realised_max"]
        assert r["coverage"] >= r["accuracy"] and r["selection_gap"] == pytest.approx(
            r["coverage"] - r["accuracy"]
        )
        assert r["accuracy_lo"] <= r["accuracy"] <= r["accuracy_hi"]
        assert r["coverage_lo"] <= r["coverage"] <= r["coverage_hi"]
        # the unit is total_tokens: the PRM's tokens are counted in it
        assert r["prm_tokens_mean"] > 0 and r["total_tokens_mean"] == pytest.approx(r["realised_mean"])
    # each cell's row is computed from its own run dir
    run = out / "runs" / "beam-total_tokens400-seed1"
    lines = (run / "results.jsonl").read_text().splitlines()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert len(lines) == 8 and cfg["budget"]["total_tokens"] == 400 and cfg["run"]["seed"] == 1


def test_more_budget_buys_coverage_for_best_of_n(grid):
    out, _ = grid
    rows = {(r["algorithm"], r["budget"]): r for r in compare.pool_seeds(
        json.loads((out / "comparison.json").read_text())["rows"])}  # fmt: skip
    assert rows[("best_of_n", 1600.0)]["realised_mean"] > 2 * rows[("best_of_n", 400.0)]["realised_mean"]
    assert rows[("best_of_n", 1600.0)]["coverage"] >= rows[("best_of_n", 400.0)]["coverage"]


def test_report_has_the_four_plots_inline(grid):
    out, _ = grid
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    for name in ("accuracy_vs_compute", "coverage_vs_accuracy", "token_efficiency", "verifier_vs_accuracy"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "rule x reachability (ORACLE: a ceiling)" in page


def test_rerun_resumes_every_cell(grid, capsys):
    out, argv = grid
    before = {p: p.read_text() for p in (out / "runs").glob("*/results.jsonl")}
    assert main(argv) == 0
    assert {p: p.read_text() for p in before} == before  # nothing re-run
    meta = json.loads((out / "runs" / "mcts-total_tokens1600-seed0" / "run.json").read_text())
    assert meta["sessions"][-1]["skipped"] == 8
    assert "accuracy" in capsys.readouterr().out


def test_wilson_interval():
    assert compare.wilson(0, 10)[0] == 0.0 and compare.wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    lo, hi = compare.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert compare.wilson(0, 0) == (0.0, 1.0)


def test_bad_grids_are_config_errors():
    cfg = load_config(CONFIGS / "game24-beam.yaml", ["run.in_process=true"])
    with pytest.raises(ConfigError, match="budget-unit"):
        compare.plan(cfg, ["beam"], [100], "seconds", 1)
    with pytest.raises(ConfigError, match="> 0"):
        compare.plan(cfg, ["beam"], [0], "total_tokens", 1)
    with pytest.raises(ConfigError, match="not among"):
        compare.plan(cfg, ["beam"], [100], "total_tokens", 1, {"mcts": {"c": 1}})
    with pytest.raises(ConfigError, match=r"algorithm\.name"):
        compare.plan(cfg, ["beem"], [100], "total_tokens", 1)
    with pytest.raises(ConfigError, match="unknown field"):
        compare.plan(cfg, ["beam"], [100], "total_tokens", 1, {"beam": {"wdth": 2}})
    cells = compare.plan(cfg, ["beam", "mcts"], [100], "flops", 2, {"beam": {"width": 2}})
    assert [(c.algorithm, c.seed) for c, _ in cells] == [("beam", 0), ("beam", 1), ("mcts", 0), ("mcts", 1)]
    assert cells[0][1].algorithm == {"name": "beam", "width": 2, "expansions": 4}  # the config's own + params
    assert cells[2][1].algorithm == {"name": "mcts"} and cells[0][1].budget.flops == 100.0


def test_cli_rejects_bad_budgets(capsys):
    assert main(["compare", str(CONFIGS / "game24-beam.yaml"), "--in-process", "--algorithms", "beam",
                 "--budgets", "1k"]) == 2  # fmt: skip
    assert "--budgets" in capsys.readouterr().err


def test_a_pool_serves_jobs_on_successive_event_loops():
    """compare runs one job per cell, each in its own asyncio.run, on the same replica pool."""
    import asyncio

    from actors.dispatch import Router

    async def invoke(handle, batch):
        await asyncio.sleep(0.001)
        return [(handle, x) for x in batch], 0  # (results, queue depth)

    pool = Router(["a", "b"], invoke, key=str, max_batch=1, max_calls_in_flight=1)
    for _ in range(3):  # contention on the per-replica slots binds them to the running loop
        out = asyncio.run(pool.submit(list(range(20))))
        assert [x for _, x in out] == list(range(20))


def test_frontier_and_best_yaml_from_both_scopes(tmp_path):
    out = tmp_path / "cmp"
    argv = [
        "compare", str(CONFIGS / "game24-best_of_n.yaml"), "--in-process", "--algorithms", "best_of_n,beam",
        "--budgets", "200,600", "--budget-unit", "generated_tokens", "--budget-scope", "problem,job",
        "--limit", "12", "--out", str(out), "--params", "best_of_n.n=auto", "--params", "best_of_n.wave=auto",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert {r["budget_scope"] for r in rows} == {"problem", "job"} and len(rows) == 8
    pooled = compare.pool_seeds(rows)
    for r in pooled:  # the frontier: exactly the rows nothing else dominates
        dominated = any(
            o["accuracy"] >= r["accuracy"]
            and o["realised_mean"] <= r["realised_mean"]
            and (o["accuracy"] > r["accuracy"] or o["realised_mean"] < r["realised_mean"])
            for o in pooled
        )
        assert r["frontier"] == (not dominated)
    assert any(r["frontier"] for r in rows)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert set(best) == {"generated_tokens 200", "generated_tokens 600"}
    for key, entry in best.items():
        budget = float(key.split()[1])
        same = [r for r in pooled if r["budget"] == budget]
        assert entry["accuracy"] == pytest.approx(max(r["accuracy"] for r in same), abs=1e-4)
        # the written config runs as it is, and is the winning cell's
        cfg = load_config(out / entry["config"])
        assert cfg.algorithm["name"] == entry["algorithm"]["name"]
        assert cfg.budget.generated_tokens == budget and cfg.budget.scope == entry["budget_scope"]
    assert main(["run", str(out / best["generated_tokens 200"]["config"]), "--in-process",
                 "--out", str(tmp_path / "rerun"), "--quiet"]) == 0  # fmt: skip
