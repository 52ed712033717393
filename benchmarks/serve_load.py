"""Search as a service under load: ``treesearch serve`` (warm pools) against ``treesearch run``,
side by side in one run, on the project's test puzzles and the embedded models.

1. ``treesearch run`` of the puzzles (a batch job, every puzzle in one engine): searches/s over
   the search's own wall time (start-up excluded), accuracy and its 95% interval.
2. ``treesearch run --limit 1``: one puzzle cold (start-up included), timed as a process.
3. ``treesearch serve``, then the puzzles through the official ``openai`` client from C
   concurrent clients (C = 1, 8, 32, 100; C = 1 on the first ``--c1-problems`` only): searches/s,
   p50 / p99 latency, accuracy. Each request asks the batch job's budget. The largest C runs
   first, with the batch job's seed, on a prefix cache as cold as the batch job's; each other
   level with a seed of its own (its trees are not served from an earlier level's KV cache).
4. Fairness: 32 small requests alone, then the same 32 beside one with 10x their budget (a
   puzzle with no solution, so it spends it all): the small ones' p99, side by side.

Ratio lines: searches/s at C = 100 over the batch job's (target >= 0.9x); the cold run's
seconds over the warm service's p50 at C = 1 (target >= 10x); whether the C = 100 accuracy
lies in the batch run's interval; the small requests' p99 beside the big one over alone
(target <= 2x).

    .venv/bin/python -m benchmarks.serve_load [--clients 1,8,32,100] [--smoke] [--url URL --model ID]

``--url``: a service already running (its ``/v1`` base URL) instead of starting one; it must
serve ``--model`` with the same config (and, for the fairness request, a budget cap of 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from treesearch.compare import wilson
from treesearch.tasks.game24 import Game24

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "treesearch.cli", *args]


def batch(config: str, sets: list[str], n: int, out: Path) -> dict:
    """The batch job: its summary (the search's wall time excludes the pools' start; ``sets``
    may hold ``--in-process``: the smoke's deterministic backends need no Ray)."""
    subprocess.run(
        cli("run", config, "--limit", str(n), "--out", str(out), "--quiet", *sets),
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    return json.loads((out / "summary.json").read_text())


def cold_one(config: str, sets: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cli("run", config, "--limit", "1", "--out", str(out), "--quiet", *sets),
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    return time.perf_counter() - t0


def start_server(config: str, sets: list[str], out: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        cli("serve", config, "--port", str(port), "--out", str(out), "--max-in-flight", "128", *sets),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    line = proc.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"serve did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}/v1"


def load(url: str, key: str, model: str, puzzles: list, clients: int, budget: int, seed: int | None) -> dict:
    """Every puzzle through ``clients`` concurrent clients: searches/s, latencies, accuracy.
    ``seed``: the searches' seed (None: the profile's, as the batch job's)."""
    settings = {"budget": {"generated_tokens": budget}, **({"seed": seed} if seed is not None else {})}
    import openai

    task = Game24("test")
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=3600)

    def ask(p) -> tuple[float, bool]:
        t0 = time.perf_counter()
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": p.prompt}],
            extra_body={"treesearch": settings},
        )
        steps = (r.choices[0].message.content or "").split("\n")
        return time.perf_counter() - t0, task.is_correct(p, steps)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, puzzles))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    correct = sum(r[1] for r in results)
    return {
        "clients": clients,
        "searches": len(results),
        "per_s": len(results) / wall,
        "wall": wall,
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "accuracy": correct / len(results),
        "correct": correct,
    }


def fairness(url: str, key: str, model: str, puzzles: list, budget: int) -> tuple[float, float]:
    """The 32 small requests' p99 alone, and beside one request of 10x their budget."""
    import openai

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=3600)

    def ask(content: str, tokens: int) -> float:
        t0 = time.perf_counter()
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": content}],
            extra_body={"treesearch": {"budget": {"generated_tokens": tokens}}},
        )
        return time.perf_counter() - t0

    small = [p.prompt for p in puzzles[:32]]
    with ThreadPoolExecutor(33) as pool:
        alone = sorted(pool.map(lambda c: ask(c, budget), small))
        big = pool.submit(ask, "1 1 1 1", 10 * budget)  # no 24 there: it spends its whole budget
        time.sleep(0.2)
        beside = sorted(pool.map(lambda c: ask(c, budget), small))
        big.result()
    return alone[-1], beside[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,8,32,100")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--c1-problems", type=int, default=10, help="puzzles sent one at a time (C = 1)")
    ap.add_argument("--budget", type=int, default=1200, help="generated tokens per search (the main job's)")
    ap.add_argument(
        "--smoke", action="store_true", help="deterministic backends, 12 puzzles: checks the script"
    )
    ap.add_argument("--url", default=None, help="a running service's /v1 URL (default: start one)")
    ap.add_argument("--model", default=None, help="its model id (default: the config's name)")
    ap.add_argument("--api-key", default="none", help="its API key")
    args = ap.parse_args()
    config = "configs/game24-beam.yaml" if args.smoke else "configs/game24.yaml"
    model = args.model or Path(config).stem
    n, c1 = (12, 4) if args.smoke else (args.problems, args.c1_problems)
    clients = [1, 4, 12] if args.smoke else [int(x) for x in args.clients.split(",")]
    budget = 2000 if args.smoke else args.budget
    # the batch job and the service search alike: same config, seed and budget per puzzle
    job_sets = ["--set", f"budget.generated_tokens={budget}", *(["--in-process"] if args.smoke else [])]
    puzzles = Game24("test").problems()[:n]
    with tempfile.TemporaryDirectory() as tmp:
        summary = batch(config, job_sets, n, Path(tmp) / "batch")
        cold = cold_one(config, job_sets, Path(tmp) / "cold")
        # the profile's cap allows the fairness test's 10x request
        proc, url = (None, args.url) if args.url else start_server(
            config, ["--set", f"budget.generated_tokens={10 * budget}"], Path(tmp) / "serve"
        )  # fmt: skip
        try:
            # the largest C first, on a prefix cache as cold as the batch job's and with its seed;
            # the others with seeds of their own, so no level is served from an earlier one's cache
            order = sorted(clients, reverse=True)
            rows = sorted((load(url, args.api_key, model, puzzles[:c1] if c == 1 else puzzles, c, budget,
                                None if i == 0 else 1000 * i) for i, c in enumerate(order)),
                          key=lambda r: r["clients"])  # fmt: skip
            alone, beside = fairness(url, args.api_key, model, puzzles, budget)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
    batch_per_s = summary["n_problems"] / summary["ledger"]["wall_seconds"]
    lo, hi = wilson(round(summary["accuracy"] * summary["n_problems"]), summary["n_problems"])
    print(f"{model} on {n} test puzzles, {budget} generated tokens each, {os.cpu_count()} cores")
    print(
        f"batch job: {batch_per_s:.2f} searches/s over {summary['ledger']['wall_seconds']:.1f} s of search, "
        f"accuracy {summary['accuracy']:.1%} (95% {lo:.1%}-{hi:.1%}); cold one-puzzle run {cold:.1f} s"
    )
    print(f"{'clients':>8} {'searches':>9} {'per s':>7} {'p50 s':>7} {'p99 s':>7} {'accuracy':>9}")
    for r in rows:
        print(
            f"{r['clients']:>8} {r['searches']:>9} {r['per_s']:>7.2f} {r['p50']:>7.2f} {r['p99']:>7.2f} "
            f"{r['accuracy']:>9.1%}"
        )
    print(
        f"fairness: 32 small requests' p99 {alone:.2f} s alone, {beside:.2f} s beside one of 10x their budget"
    )
    top, one = rows[-1], rows[0]
    inside = lo <= top["accuracy"] <= hi
    speed = top["per_s"] / batch_per_s
    print(
        f"ratio: searches/s at C={top['clients']} / batch {speed:.2f}x (target >= 0.9x); "
        f"cold run / warm p50 {cold / one['p50']:.1f}x (target >= 10x); accuracy at C={top['clients']} "
        f"{top['accuracy']:.1%} {'inside' if inside else 'outside'} the batch interval; fairness p99 "
        f"{beside / alone:.2f}x (target <= 2x)"
    )


if __name__ == "__main__":
    main()
