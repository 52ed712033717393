"""Engine: batching across problems, budgets, ledger, failures, non-finite PRM scores."""

import asyncio
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treesearch.backends.deterministic import NoisyOracleGenerator, RulePRM
from treesearch.budget import BUDGET_UNITS, Budget, BudgetGuard, Ledger
from treesearch.protocol import ExpandRequest, ScoreResult
from treesearch.results import JobFailed
from treesearch.tasks.game24 import Game24

from .helpers import ALGO_PARAMS, run_inprocess, run_local


class CountingGenerator(NoisyOracleGenerator):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches: list[list[str]] = []

    async def generate(self, requests):
        self.batches.append([r.problem_id for r in requests])
        return await super().generate(requests)


def test_requests_of_many_problems_share_backend_calls():
    gen = CountingGenerator(0.5, 0)
    _results, job, counters, _ = run_inprocess("beam", n_problems=20, generator=gen)
    n_requests = sum(len(b) for b in gen.batches)
    assert n_requests == job.generator_calls
    assert counters.generator_batches == len(gen.batches)
    assert len(gen.batches) <= 3 * 4  # ~one batch per depth, not one per request
    assert max(len(set(b)) for b in gen.batches) == 20  # one call carried all 20 problems


def test_concurrency_does_not_change_results():
    a = run_inprocess("mcts", n_problems=8, concurrency=1)
    b = run_inprocess("mcts", n_problems=8, concurrency=64)
    assert [r.to_json() | {"ledger": None} for r in a[0]] == [r.to_json() | {"ledger": None} for r in b[0]]
    assert all(a[3][k].to_json() == b[3][k].to_json() for k in a[3])


def test_job_ledger_is_sum_of_problem_ledgers():
    results, job, _, trees = run_inprocess("tot_bfs")
    for field in ("policy_generated_tokens", "prm_tokens", "generator_calls", "prm_calls", "nodes"):
        assert getattr(job, field) == sum(getattr(r.ledger, field) for r in results)
    for r in results:
        assert r.ledger.nodes == len(trees[r.id]) - 1 == r.nodes
        assert 0 < r.ledger.policy_cached_prompt_tokens <= r.ledger.policy_prompt_tokens
        assert r.ledger.flops == pytest.approx(
            2 * 1.28e6 * (r.ledger.policy_prompt_tokens - r.ledger.policy_cached_prompt_tokens)
            + 2 * 1.28e6 * r.ledger.policy_generated_tokens
        )


def test_backend_failure_fails_the_problems_and_past_the_limit_the_job():
    class Broken(NoisyOracleGenerator):
        async def generate(self, requests):
            raise RuntimeError("engine died")

    results, _, counters, _ = run_inprocess("beam", generator=Broken())
    assert counters.failed == 6 and {r.status for r in results} == {"failed"}
    assert all(r.error == "RuntimeError: engine died" and not r.correct for r in results)
    with pytest.raises(JobFailed, match=r"problems failed \(more than 2\); last: RuntimeError: engine died"):
        run_inprocess("beam", generator=Broken(), max_failures=2)


def test_a_raising_task_method_fails_only_its_problem():
    class Fragile(Game24):
        def is_terminal(self, problem, steps):
            if problem.id == BAD:
                raise IndexError("model text the task cannot read")
            return super().is_terminal(problem, steps)

    problems = Game24("dev").problems()[:6]
    BAD = problems[2].id
    results, job, counters, _ = run_inprocess("beam", problems=problems, task=Fragile("dev"))
    assert [r.id for r in results] == [p.id for p in problems]
    bad = results[2]
    assert bad.status == "failed" and bad.error == "IndexError: model text the task cannot read"
    assert bad.ledger.generator_calls == 1  # what it spent before it raised is booked
    assert all(r.status == "ok" for i, r in enumerate(results) if i != 2) and counters.failed == 1
    assert job.generator_calls == sum(r.ledger.generator_calls for r in results)


def test_nonfinite_prm_scores_become_lowest_and_are_counted():
    task = Game24("dev")

    class NaNPRM(RulePRM):
        def score_one(self, req):
            res = super().score_one(req)
            return ScoreResult(tuple(tuple(math.nan for _ in c) for c in res.scores), res.tokens)

    results, job, _, trees = run_inprocess("beam", scorer=NaNPRM(task))
    assert job.nonfinite_scores > 0
    assert job.nonfinite_scores == sum(r.ledger.nonfinite_scores for r in results)
    for t in trees.values():
        scored = [t.prm_score[n] for n in range(1, len(t)) if not math.isnan(t.prm_score[n])]
        assert scored and all(s == 0.0 for s in scored)


def test_budget_guard_reserves_worst_case():
    g = BudgetGuard(Budget(generated_tokens=100))
    assert g.reserve(Ledger(policy_generated_tokens=60))
    assert not g.reserve(Ledger(policy_generated_tokens=50))  # 60 reserved + 50 > 100
    g.book(Ledger(policy_generated_tokens=60), Ledger(policy_generated_tokens=30))
    assert g.reserve(Ledger(policy_generated_tokens=70))  # 30 spent + 70 = 100
    assert g.reserved.policy_generated_tokens == 70 and g.spent.policy_generated_tokens == 30
    with pytest.raises(ValueError):
        Budget(nodes=-1)


@settings(max_examples=25, deadline=None)
@given(
    algorithm=st.sampled_from(sorted(ALGO_PARAMS)),
    unit=st.sampled_from([u for u in BUDGET_UNITS if u != "seconds"]),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 3),
)
def test_no_budget_is_ever_exceeded(algorithm, unit, fraction, seed):
    # limits from 0 up to about what the search spends unconstrained
    scale = {
        "generated_tokens": 3000,
        "total_tokens": 12000,
        "flops": 3e10,
        "generator_calls": 60,
        "nodes": 150,
    }
    limit = max(1.0, fraction * scale[unit])  # a budget of 0 is refused at load
    limit = int(limit) if unit != "flops" else limit
    budget = Budget(**{unit: limit})
    results, _, _, _ = run_inprocess(algorithm, budget=budget, n_problems=3, seed=seed)
    assert len(results) == 3
    for r in results:
        assert r.ledger.value(unit) <= limit


def test_mc_rollout_prm_values_are_fractions_of_correct_rollouts():
    from treesearch.backends.mc_rollout import MonteCarloRolloutPRM
    from treesearch.protocol import ScoreRequest
    from treesearch.tasks import game24 as g

    task = Game24("all")
    p = task.problem((4, 6, 12, 13))
    gen = NoisyOracleGenerator(0.0, 0)  # never errs: every rollout from a solvable state solves it
    prm = MonteCarloRolloutPRM(gen, task, [p], rollouts=4, max_step_tokens=40)
    good = [m.text() for m in g.solve(g.state_of((4, 6, 12, 13)))]
    dead = "13 + 12 = 25 (left: 4 6 25)"
    assert not g.reachable(g.state_of((4, 6, 25)))
    req = ScoreRequest.one(p.id, 1, p.prompt, (good[0], good[1]))
    (res,) = asyncio.run(prm.score([req]))
    bound = prm.counter.root(p.prompt, p.prompt)
    for step in req.chains[0]:
        bound = prm.counter.extend(bound, step)
    assert res.scores == ((1.0, 1.0),) and 0 < res.tokens[0] <= bound[0]
    (res,) = asyncio.run(prm.score([ScoreRequest.one(p.id, 2, p.prompt, (dead,))]))
    assert res.scores == ((0.0,),)
    (res,) = asyncio.run(prm.score([ScoreRequest.one(p.id, 3, p.prompt, tuple(good))]))
    assert res.scores == ((1.0, 1.0, 1.0),)  # a finished chain: its own correctness
    noisy = MonteCarloRolloutPRM(NoisyOracleGenerator(0.6, 0), task, [p], rollouts=8, max_step_tokens=40)
    (res,) = asyncio.run(noisy.score([ScoreRequest.one(p.id, 1, p.prompt, (good[0],))]))
    assert 0.0 <= res.scores[0][0] < 1.0 and (res.scores[0][0] * 8).is_integer()


def test_mc_rollout_prm_in_a_search_respects_the_budget(tmp_path):
    from treesearch.config import load_config

    cfg = load_config(
        None,
        [
            "algorithm={name: beam, width: 2, expansions: 2}",
            "prm.backend=mc_rollout",
            "prm.rollouts=2",
            "budget.total_tokens=6000",
            "run.limit=4",
            "task.split=dev",
            "generator.max_step_tokens=40",
        ],
    )
    s = run_local(cfg, tmp_path)
    assert s["ledger"]["prm_tokens"] > 0 and s["ledger"]["prm_flops"] > 0
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        assert json.loads(line)["ledger"]["total_tokens"] <= 6000


def test_a_batch_that_returns_after_its_search_was_cancelled_is_dropped_quietly():
    """A cancelled search's in-flight batch still returns and must not fail on the cancelled
    futures (it printed InvalidStateError at shutdown)."""
    from treesearch.batcher import Batcher

    class HeldGenerator:
        def __init__(self) -> None:
            self.release = asyncio.Event()

        async def generate(self, requests):
            await self.release.wait()
            return [f"result of {r}" for r in requests]

    errors = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        gen = HeldGenerator()
        batcher = Batcher(gen, scorer=RulePRM(Game24("dev")))
        batcher.open_slots(1)
        asks = [ExpandRequest("p", node, b"", 1, 8, "\n") for node in (1, 2)]
        search = asyncio.ensure_future(batcher.generate(asks))
        await asyncio.sleep(0)  # submitted and flushed: one batch in flight
        assert batcher.generator_batches == 1
        search.cancel()
        gen.release.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert search.cancelled()

    asyncio.run(main())
    assert errors == []
