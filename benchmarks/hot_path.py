"""The engine's hot path: CPU per tree node, and the cost of PRM-token accounting.

1. **CPU per node on the Ray path.** The engine runs in this process over replica pools on a
   local Ray (one generator and one PRM replica of the zero-cost backends of
   :mod:`benchmarks.harness`, warm: after one run they only look their answers up), 500
   Game-of-24 problems, beam search and MCTS. Reported: nodes/s and microseconds of CPU of
   the thread running the engine per tree node (everything the engine, the algorithms and the
   transports' client side do), medians of ``--runs``.
2. **PRM-token accounting on 2,000-token chains.** Every score request reserves an upper
   bound of the PRM's input tokens. The old path tokenised the whole chain for each request;
   the engine now keeps a count per node and extends it by the new step's tokens only. Both
   are timed per node on chains of 25 steps of ~80 tokens (Math-Shepherd format), with the
   embedded models' character tokenizer and a byte-level BPE tokenizer trained here.

    .venv/bin/python -m benchmarks.hot_path [--problems 500] [--runs 7] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import time

import ray

from actors.replicas import start_replicas
from benchmarks.harness import median_of, replica_transports, run_engine, table, zero_cost_job
from treesearch.models import embedded_model
from treesearch.prm.base import count_tokens
from treesearch.prm.math_shepherd import MathShepherdFormat


def engine_run(job, replicas) -> dict[str, float]:
    gen, scorer = replica_transports(job, replicas)
    t0 = time.perf_counter()
    _, ledger, counters = run_engine(job, gen, scorer)
    wall = time.perf_counter() - t0
    return {
        "nodes": ledger.nodes,
        "nodes_per_s": ledger.nodes / wall,
        "us_per_node": counters.cpu_us_per_node,
    }


def math_chain(rng: random.Random, steps: int, target_tokens: int, tok) -> list[str]:
    """``steps`` arithmetic steps of about ``target_tokens / steps`` tokens each."""
    out = []
    for _ in range(steps):
        words = []
        while len(tok.encode(" ".join(words), add_special_tokens=False)) < target_tokens // steps:
            a, b = rng.randint(2, 999), rng.randint(2, 99)
            words.append(f"{a} * {b} = {a * b}, so")
        out.append(" ".join(words))
    return out


def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [
        f"{a} * {b} = {a * b}, so the next step adds {a + b}"
        for a, b in ((rng.randint(2, 999), rng.randint(2, 99)) for _ in range(5000))
    ]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<s>", "ки"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")


def accounting(tok, name: str, chains: int, steps: int, tokens: int) -> dict[str, float]:
    fmt = MathShepherdFormat()
    rng = random.Random(1)
    question = "What is the product, step by step?"
    data = [math_chain(rng, steps, tokens, tok) for _ in range(chains)]
    counter = fmt.counter(tok)
    t0 = time.perf_counter()
    for chain in data:  # old: the whole chain, once per node (each step is a new node)
        for i in range(1, len(chain) + 1):
            count_tokens(fmt, tok, question, chain[:i])
    whole = (time.perf_counter() - t0) / (chains * steps)
    t0 = time.perf_counter()
    bounds = []
    for chain in data:  # new: each node extends its parent's count by its own step
        state = counter.root(question, question)
        for step in chain:
            state = counter.extend(state, step)
        bounds.append(state[0])
    incremental = (time.perf_counter() - t0) / (chains * steps)
    exact = [count_tokens(fmt, tok, question, chain) for chain in data]
    assert all(b >= e for b, e in zip(bounds, exact, strict=True))  # the bound never undercounts
    return {
        "tokenizer": name,
        "chain_tokens": sum(exact) / len(exact),
        "whole_us": 1e6 * whole,
        "incremental_us": 1e6 * incremental,
        "slack": sum(b - e for b, e in zip(bounds, exact, strict=True)) / len(exact),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="20 problems, 1 run: checks the script works")
    args = ap.parse_args()
    n, runs = (20, 1) if args.smoke else (args.problems, args.runs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    replicas = start_replicas(zero_cost_job("beam", n))
    rows = []
    for algo in ("beam", "mcts"):
        job = zero_cost_job(algo, n)
        engine_run(job, replicas)  # warm-up: fills the replicas' memos
        rows.append({"algorithm": algo, **median_of(runs, lambda job=job: engine_run(job, replicas))})
    replicas.shutdown()
    ray.shutdown()
    print(f"1. engine on the Ray path, zero-cost replicas, {n} problems, medians of {runs} runs")
    print(
        table(
            rows,
            [
                ("algorithm", "algorithm", ""),
                ("nodes", "nodes", ",.0f"),
                ("nodes_per_s", "nodes/s", ",.0f"),
                ("us_per_node", "CPU us/node", ".1f"),
            ],
        )
    )
    chains, steps, tokens = (2, 5, 400) if args.smoke else (20, 25, 2000)
    from transformers import AutoTokenizer

    acc = [
        accounting(
            AutoTokenizer.from_pretrained(embedded_model("prm")), "embedded (char)", chains, steps, tokens
        ),
        accounting(bpe_tokenizer(), "byte-level BPE", chains, steps, tokens),
    ]
    print(f"2. PRM-token accounting per node, {chains} chains of {steps} steps, ~{tokens} tokens")
    print(
        table(
            acc,
            [
                ("tokenizer", "tokenizer", ""),
                ("chain_tokens", "tokens", ",.0f"),
                ("whole_us", "whole chain us", ".1f"),
                ("incremental_us", "per step us", ".2f"),
                ("slack", "bound - exact", ".1f"),
            ],
        )
    )
    worst = max(r["us_per_node"] for r in rows)
    print(
        f"ratio: engine CPU per node {rows[0]['us_per_node']:.1f} us (beam), {rows[1]['us_per_node']:.1f} us "
        f"(mcts) (target <= 35); PRM accounting {max(a['incremental_us'] for a in acc):.2f} us/node vs "
        f"{max(a['whole_us'] for a in acc):.0f} us whole-chain (target <= 5); worst {worst:.1f} us/node"
    )


if __name__ == "__main__":
    main()
