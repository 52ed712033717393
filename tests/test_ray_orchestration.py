"""Ray layer with deterministic backends: identity with in-process runs, faults, affinity,
the shared tree store under concurrent workers, and start-up failures. One Ray per module."""

import asyncio
import json
import threading
import time

import pytest
import ray

from actors.plane import RayPlane, ray_plane
from actors.replicas import Pool, start_pool, start_replicas, wait_pools
from actors.shared_tree import SharedTreeActor, SharedTreeClient
from treesearch.budget import comparable_rows
from treesearch.cli import main
from treesearch.config import load_config
from treesearch.job import resolve, typed_sections
from treesearch.runner import run_job
from treesearch.tree import NO_PARENT, Step, Tree

from .helpers import run_local
from .test_cli import CONFIGS

ALGOS = ["best_of_n", "beam", "dvts", "tot_bfs", "tot_dfs", "mcts"]


pytestmark = pytest.mark.usefixtures("ray_cluster")  # one Ray for the module


def _cfg(algo, *extra):
    # actors take no CPU so several pools fit in a 2-CPU Ray
    return load_config(
        CONFIGS / f"game24-{algo}.yaml",
        ["run.limit=8", "generator.resources.num_cpus=0", "prm.resources.num_cpus=0", *extra],
    )


def _rows(out):
    return comparable_rows([json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()])


def _same_tree(a: Tree, b: Tree) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("replica"), db.pop("replica")  # Ray records which replica made a node
    return json.dumps(da, default=str) == json.dumps(db, default=str)


@pytest.fixture(scope="module")
def plane():
    # a bound no wave reaches: every request stays on its tree's home (the bound is unit-tested)
    job = resolve(_cfg("beam", "generator.resources.replicas=2", "generator.resources.affinity_bound=1000"))
    with ray_plane(job) as p:
        yield p


@pytest.mark.parametrize("algo", ALGOS)
def test_ray_run_equals_in_process_run(tmp_path, plane: RayPlane, algo):
    cfg = _cfg(algo)
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    run_job(resolve(cfg), ray_out, plane.local, progress=False)
    run_local(cfg, local_out)
    assert _rows(ray_out) == _rows(local_out)
    for f in (local_out / "trees").iterdir():
        assert _same_tree(
            Tree.from_msgpack(f.read_bytes()), Tree.from_msgpack((ray_out / "trees" / f.name).read_bytes())
        )


@pytest.mark.parametrize("algo", ["beam", "mcts", "adaptive"])
def test_job_pool_on_ray_equals_in_process(tmp_path, plane: RayPlane, algo):
    """The job-wide pool's scheduler (budget-sized shapes, early stops, rounds granted by
    priority at barriers) gives the same results on Ray replicas as in-process, same seed."""
    cfg = _cfg("beam", f"algorithm={{name: {algo}}}", "budget.scope=job", "budget.generated_tokens=300")
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    ray_summary = run_job(resolve(cfg), ray_out, plane.local, progress=False)
    run_local(cfg, local_out)
    rows = _rows(local_out)
    assert _rows(ray_out) == rows
    spent = [r["ledger"]["policy_generated_tokens"] for r in rows]
    assert sum(spent) <= 300 * len(rows) and max(spent) > 300  # the pool, and compute moved
    assert ray_summary["ledger"]["early_stops"] >= 1


def test_save_trees_false_writes_no_tree_on_the_driver_engine(tmp_path, plane: RayPlane):
    """``run.save_trees: false`` on Ray with the engine in the driver (always the case with a job
    budget): no tree is serialised or written (the driver's plane once dropped the setting)."""
    cfg = _cfg("beam", "run.save_trees=false", "budget.scope=job", "budget.generated_tokens=300")
    job = resolve(cfg)
    rows: list = []
    plane_run = plane.run

    async def spy(job, problems, on_row, failures):
        return await plane_run(
            job, problems, lambda row, tree: (rows.append(tree), on_row(row, tree)), failures
        )

    plane.run = spy  # type: ignore[method-assign]
    try:
        run_job(job, tmp_path, plane, progress=False)
    finally:
        plane.run = plane_run  # type: ignore[method-assign]
    assert len(rows) == 8 and rows == [None] * 8  # no tree bytes even made
    assert not (tmp_path / "trees").exists() and len(_rows(tmp_path)) == 8


def test_prefix_affinity_keeps_each_tree_on_one_replica(tmp_path, plane: RayPlane):
    cfg = _cfg("beam", "run.limit=16")
    before = list(plane.generator.router.stats.routed)
    run_job(resolve(cfg), tmp_path, plane.local, progress=False)
    used = set()
    for f in (tmp_path / "trees").iterdir():
        tree = Tree.from_msgpack(f.read_bytes())
        replicas = {tree.replica[n] for n in range(1, len(tree))}
        assert len(replicas) == 1, (f.name, replicas)  # every expansion of this tree on one replica
        used |= replicas
    assert used == {0, 1}  # and the trees were spread over both replicas
    routed = [a - b for a, b in zip(plane.generator.router.stats.routed, before, strict=True)]
    assert min(routed) > 0.25 * sum(routed)


def test_killed_generator_and_prm_replicas_lose_nothing(tmp_path):
    cfg = _cfg(
        "mcts",
        "run.limit=12",
        "generator.latency_s=0.05",
        "prm.latency_s=0.05",
        "prm.resources.max_calls_in_flight=1",
        "generator.resources.replicas=2",
        "prm.resources.replicas=2",
        "generator.resources.max_calls_in_flight=1",
    )
    with ray_plane(resolve(cfg)) as b:
        killer = threading.Thread(target=_kill_midway, args=(tmp_path / "ray", b))
        killer.start()
        run_job(resolve(cfg), tmp_path / "ray", b.local, progress=False)
        killer.join()
        assert b.generator.router.stats.reissued > 0 and b.scorer.router.stats.reissued > 0
    run_local(cfg, tmp_path / "local")
    ray_rows, local_rows = _rows(tmp_path / "ray"), _rows(tmp_path / "local")
    assert len(ray_rows) == 12 and [r["id"] for r in ray_rows] == [r["id"] for r in local_rows]
    # each completed request counted once: the ledgers equal the undisturbed run's
    assert ray_rows == local_rows


def _kill_midway(out, b: RayPlane):
    deadline = time.time() + 60
    while time.time() < deadline:
        done = out / "results.jsonl"
        if done.exists() and len(done.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    for router, handles in ((b.generator.router, b.replicas.generator), (b.scorer.router, b.replicas.prm)):
        while time.time() < deadline:  # kill a replica while it holds requests in flight
            busy = [r for r, load in enumerate(router.load) if load > 0]
            if busy:
                ray.kill(handles[busy[0]], no_restart=False)
                break
            time.sleep(0.001)


def test_shared_tree_survives_concurrent_simulations():
    """Six clients run simulations on one shared tree actor at once: every commit lands,
    no virtual loss is left, and visits add up."""
    from treesearch.algorithms import MCTSConfig

    store = SharedTreeActor.remote()
    cfg = MCTSConfig(simulations=90, parallel=6, expansions=2, widen_c=0.0)
    ray.get(store.open.remote("p", "1 2 3 4\n", [1, 2, 3], 3, cfg))

    async def worker(w: int):
        client = SharedTreeClient(store, "p", f"w{w}")
        while (leaves := await client.select(2)) is not None:
            commits = []
            for lf in leaves:
                steps = [(Step(f"w{w}-{lf.node}-{j}", (j,), -j, False), None) for j in range(2)]
                commits.append((lf.ticket, steps, [(*[0.5] * len(lf.steps), 0.1 * j) for j in range(2)], w))
            await client.commit(commits)
            await asyncio.sleep(0)

    async def all_workers():
        await asyncio.gather(*(worker(w) for w in range(6)))

    asyncio.run(all_workers())
    tree_bytes, _, stats = ray.get(store.finish.remote("p"))
    tree = Tree.from_msgpack(tree_bytes)
    assert stats["simulations"] == 90 and len(tree) > 1
    for n in range(len(tree)):
        assert tree.virtual_loss[n] == 0
        assert tree.parent[n] == NO_PARENT or tree.parent[n] < n
        assert tree.visits[n] == (1 if n else 0) + sum(tree.visits[c] for c in tree.children[n])
    assert tree.visits[0] == len(tree) - 1


def test_unschedulable_replica_fails_with_its_resources(tmp_path):
    cfg = _cfg("beam", "generator.resources.num_gpus=1", "generator.resources.startup_timeout_s=3")
    with pytest.raises(RuntimeError, match=r"did not start within 3 s: each asks .*'GPU': 1.0"):
        start_replicas(resolve(cfg))


def test_replica_that_crashes_at_start_surfaces_its_cause(tmp_path):
    from treesearch.training.tiny import build_char_tokenizer, build_tiny_llama

    model = build_tiny_llama(tmp_path / "m", build_char_tokenizer())
    for f in model.glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    cfg = _cfg("beam", f"generator={{backend: hf, model: {model}}}")
    with pytest.raises(RuntimeError, match=r"generator replica failed to start: .*Error"):
        start_replicas(resolve(cfg))
    # both pools start at once: the one that failed is named, not the first
    cfg = _cfg("beam", f"prm={{backend: outcome_rm, model: {model}}}")
    with pytest.raises(RuntimeError, match=r"PRM replica failed to start: .*Error"):
        start_replicas(resolve(cfg))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "generator={backend: vllm, model: /nonexistent/model}",
            "generator.model: model directory not found",
        ),
        ("generator={backend: vllm, model: CONFIGS}", "is not a Hugging Face model directory"),
        ("prm={backend: math_shepherd, model: MODEL}", "step tag 'ки' is not a single token"),
        ("prm={backend: math_shepherd, model: MODEL, step_tag: Q}", "step tag 'Q' is not a single token"),
        ("prm={backend: qwen_prm, model: MODEL}", "step separator '<extra_0>' is not a single token"),
        (
            "prm={backend: math_shepherd, engine: vllm, model: MODEL, step_tag: +}",
            "must differ from the label",
        ),
        (
            "prm={backend: outcome_rm, engine: vllm, model: MODEL}",
            "vllm does not serve the outcome_rm format",
        ),
        ("prm={backend: math_shepherd, model: MODEL, reachability: true}", "prm.reachability: unknown field"),
    ],
)
def test_bad_models_fail_before_search_with_exit_2(tmp_path, capsys, section, message):
    from treesearch.training.tiny import build_char_tokenizer, build_tiny_llama

    model = build_tiny_llama(tmp_path / "m", build_char_tokenizer(), hidden=32, heads=1, layers=1)
    section = section.replace("MODEL", str(model)).replace("CONFIGS", str(CONFIGS))
    out = tmp_path / "out"
    capsys.readouterr()  # drop the model builder's own output
    rc = main(["run", str(CONFIGS / "game24-beam.yaml"), "--out", str(out), "--quiet", "--set", section])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_load_monitor_sees_which_replica_is_busy():
    """Busy shares are measured on the replicas (seconds with a request there, against their
    own clock): a replica that always has a call reads nearly 100%, an idle one 0%, a killed
    one ``down``."""
    from actors.load import LoadMonitor
    from actors.replica import encode_batch
    from treesearch.protocol import ExpandRequest, encode_ids

    cfg = _cfg("beam", "generator.latency_s=0.2", "generator.resources.replicas=2")
    job = resolve(cfg)
    pool = start_pool(job.generator_config, 0, "generator")
    request = ExpandRequest("p", 0, encode_ids(job.tokenizer.encode("4 5 6 10\n")), 2, 16, "\n")
    try:
        # polls a few times a second, each waiting up to every_s (a loaded 2-core box answers slowly)
        with LoadMonitor({"generator": pool.handles}, every_s=0.5, window_s=2.0) as monitor:
            deadline = time.time() + 3.0
            while time.time() < deadline:  # replica 0 always has a call; replica 1 none
                ray.get(pool.handles[0].generate.remote(encode_batch([request])))
            first, second = monitor.snapshot()["generator"]
        assert first["state"] == second["state"] == "up"
        assert first["busy"] > 0.8 and second["busy"] == 0.0, (first, second)
        # one request at a time on replica 0 (in flight or not when last polled), none on 1
        assert (
            first["requests"] >= 5
            and second["requests"] == 0
            and first["queue"] <= 1
            and second["queue"] == 0
        )
    finally:
        pool.stop()
    after = LoadMonitor({"generator": pool.handles}, every_s=1.0)
    deadline = time.time() + 30  # ray.kill returns before the actors are gone
    while True:
        after.poll()
        states = [r["state"] for r in after.snapshot()["generator"]]
        if states == ["down", "down"] or time.time() > deadline:
            break
    assert states == ["down", "down"]


@ray.remote(max_restarts=1, max_task_retries=0)
class _DiesInItsFirstAnswer:
    """A replica stand-in whose process dies while it answers its first ``info`` call."""

    def __init__(self, marker: str):
        self.marker = marker

    def info(self) -> dict:
        import os

        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # Ray restarts it; the call in flight fails with ActorUnavailableError
        return {"replica": 0, "num_parameters": 1.0}


def test_a_replica_killed_while_it_starts_is_waited_for(tmp_path):
    """The chaos benchmark's driver kill + resume once met a replica SIGKILLed while the new
    driver waited for it to start: the start must wait for Ray's restart, not fail the job."""
    cfg = _cfg("beam")
    handle = _DiesInItsFirstAnswer.remote(str(tmp_path / "died"))
    pool = Pool([handle], [], [], "generator", typed_sections(cfg).generator)
    said: list[str] = []
    wait_pools([pool], said.append)
    assert pool.infos == [{"replica": 0, "num_parameters": 1.0}] and (tmp_path / "died").exists()
    assert said[-1].startswith("generator 1/1 (") and " ready in " in said[-1]
    ray.kill(handle, no_restart=True)
