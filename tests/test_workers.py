"""Search workers on Ray: a job spread over workers equals the in-process run, a worker killed
mid-job loses nothing (each problem once, identical trees: its problems resume from their
journals on another worker), and journals replay a search exactly. One Ray per module."""

from __future__ import annotations

import json
import threading
import time

import pytest
import ray

from actors.plane import RayPlane, ray_plane
from treesearch.config import load_config
from treesearch.engine import Engine, EngineOptions
from treesearch.feed import Lease, ProblemFeed
from treesearch.job import resolve, transports
from treesearch.journal import encode_journal
from treesearch.runner import run_job
from treesearch.tree import Tree, trees_equal

from .helpers import run_local
from .test_cli import CONFIGS
from .test_ray_orchestration import _rows

pytestmark = pytest.mark.usefixtures("ray_cluster")  # one Ray for the module


def _cfg(algo: str, *extra: str):
    return load_config(
        CONFIGS / f"game24-{algo}.yaml",
        ["generator.resources.num_cpus=0", "prm.resources.num_cpus=0", *extra],
    )


def _trees(out) -> dict[str, Tree]:
    return {f.stem: Tree.from_msgpack(f.read_bytes()) for f in (out / "trees").iterdir()}


def _same_trees(a: dict[str, Tree], b: dict[str, Tree]) -> bool:
    def strip(t: Tree) -> Tree:
        t.replica = type(t.replica)("i", [0] * len(t))  # which replica made a node may differ
        return t

    return a.keys() == b.keys() and all(trees_equal(strip(a[k]), strip(b[k])) for k in a)


@pytest.mark.parametrize("algorithm", ["mcts", "adaptive"])
def test_journal_replay_rebuilds_the_tree_and_ledger_without_a_backend(algorithm):
    """Half a search's answers replayed, then live: the same tree as one uninterrupted run
    (adaptive: its first steps are heads and their completions, answers that are no nodes)."""
    import asyncio

    job = resolve(_cfg(algorithm, "run.limit=3", "run.in_process=true"))
    gen, scorer = transports(job)
    spec = job.spec(gen)
    recording = Engine(gen, scorer, EngineOptions(record=True))
    journals, full = {}, []

    def keep_journal(result, tree):
        journals[result.id] = list(recording.trees.journal(result.id))
        full.append(result)

    asyncio.run(recording.run(ProblemFeed(job.problems, closed=True), spec, keep_journal))
    assert len(full) == 3 and all(journals.values())
    for cut in (0.3, 0.7):  # replay part of each journal, then search on with the backends
        leases = []
        for p in job.problems:
            part = journals[p.id][: int(cut * len(journals[p.id]))]
            leases.append(Lease(p, [encode_journal(part)]))
        again: list = []
        counters = asyncio.run(Engine(gen, scorer).run(ProblemFeed(leases, closed=True), spec, _into(again)))
        assert counters.replayed == 3 and counters.replay_restarts == 0
        by_id = {r.id: r for r in again}
        assert by_id.keys() == {r.id for r in full}
        for r in full:
            mine = by_id[r.id]
            assert (mine.answer, mine.nodes, mine.correct) == (r.answer, r.nodes, r.correct)
            assert mine.ledger.policy_generated_tokens == r.ledger.policy_generated_tokens
            assert mine.ledger.prm_tokens == r.ledger.prm_tokens and mine.ledger.nodes == r.ledger.nodes


def _into(results: list):
    return lambda result, tree: results.append(result)


def test_a_job_on_two_workers_equals_the_in_process_run(tmp_path):
    cfg = _cfg("beam", "run.limit=12", "run.search_workers=2", "run.lease=2")
    job = resolve(cfg)
    with_workers = tmp_path / "workers"
    with ray_plane(job) as plane:
        summary = run_job(job, with_workers, plane, progress=False)
    run_local(_cfg("beam", "run.limit=12"), tmp_path / "local")
    assert _rows(with_workers) == _rows(tmp_path / "local")
    assert _same_trees(_trees(with_workers), _trees(tmp_path / "local"))
    assert summary["search_workers"] == 2 and summary["nodes"] == summary["ledger"]["nodes"]
    assert all(c > 0 for c in summary["worker_cpu_seconds"])  # both workers searched


def test_a_killed_worker_loses_nothing_and_its_problems_resume_from_their_journals(tmp_path):
    cfg = _cfg(
        "mcts",
        "run.limit=16",
        "run.search_workers=2",
        "run.lease=4",
        "run.concurrency=4",
        "generator.latency_s=0.03",
        "prm.latency_s=0.03",
    )
    job = resolve(cfg)
    out = tmp_path / "killed"
    with ray_plane(job) as plane:
        killer = threading.Thread(target=_kill_a_worker_midway, args=(out, plane))
        killer.start()
        summary = run_job(job, out, plane, progress=False)
        killer.join()
    assert summary["lost_attempts"] >= 1 and summary["resumed_from_journal"] >= 1
    undisturbed = tmp_path / "undisturbed"
    run_local(_cfg("mcts", "run.limit=16"), undisturbed)
    rows = _rows(out)
    assert [r["id"] for r in rows] == sorted({r["id"] for r in rows})  # each problem exactly once
    assert rows == _rows(undisturbed)  # same answers and the same compute, counted once
    assert _same_trees(_trees(out), _trees(undisturbed))


def _kill_a_worker_midway(out, plane: RayPlane) -> None:
    deadline = time.time() + 60
    results = out / "results.jsonl"
    while time.time() < deadline:  # once some problems are done and worker 0 is mid-search
        done = results.exists() and len(results.read_text().splitlines()) >= 2
        fleet = plane.fleet
        if done and fleet is not None and any(lease.journal for lease in list(fleet.held[0].values())):
            break
        time.sleep(0.005)
    assert plane.fleet is not None
    ray.kill(plane.fleet.workers[0], no_restart=False)


def test_fewer_problems_than_workers_share_their_trees(tmp_path):
    cfg = _cfg(
        "mcts",
        "run.limit=2",
        "run.search_workers=4",
        "algorithm.simulations=32",
        "generator.resources.replicas=2",
    )
    job = resolve(cfg)
    with ray_plane(job) as plane:
        summary = run_job(job, tmp_path / "shared", plane, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "shared" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in job.problems)  # each once
    for r in rows:
        assert r["status"] == "ok" and r["shared_tree"]["simulations"] == 32
        tree = Tree.from_msgpack((tmp_path / "shared" / "trees" / f"{r['id']}.msgpack").read_bytes())
        assert r["nodes"] == len(tree) - 1 and all(v == 0 for v in tree.virtual_loss)
        assert r["ledger"]["nodes"] == r["nodes"]  # every share's compute, counted once
    assert all(c > 0 for c in summary["worker_cpu_seconds"])  # all four workers searched
