"""Compute that moves: budget-sized shapes, early stopping, the job-wide pool, adaptive."""

import asyncio
import math
from types import SimpleNamespace

import pytest

from treesearch.algorithms import ALGORITHMS
from treesearch.budget import Budget
from treesearch.job_budget import JobBudget
from treesearch.stopping import StopRule
from treesearch.tasks.game24 import Game24
from treesearch.tree import ROOT, TERMINAL, Step, Tree

from .helpers import run_inprocess

AUTO = sorted(ALGORITHMS)  # every algorithm, shape left to the budget


@pytest.mark.parametrize("algorithm", AUTO)
@pytest.mark.parametrize("budget", [150, 300, 1200])
def test_auto_shapes_stay_within_the_budget_and_reach_finished_chains(algorithm, budget):
    results, job, _, trees = run_inprocess(
        algorithm, {}, Budget(generated_tokens=budget, early_stop="never"), n_problems=12, error_rate=0.3
    )
    assert all(r.ledger.policy_generated_tokens <= budget for r in results)
    # no search ends with nothing because its first request did not fit
    finished = sum(bool(trees[r.id].terminals()) for r in results)
    assert finished >= 9, f"{algorithm} at {budget}: {finished} of 12 trees hold a finished chain"
    if budget == 1200 and algorithm not in ("tot_dfs",):  # it stops at its first good chain
        spent = job.policy_generated_tokens / len(results)
        assert spent >= 0.5 * budget, f"{algorithm} spent {spent:.0f} of {budget} per problem"


def test_pinned_shapes_keep_their_shape():
    results, _, _, trees = run_inprocess(
        "beam", {"width": 3, "expansions": 3}, Budget(generated_tokens=5000, early_stop="never")
    )
    for r in results:
        assert len(trees[r.id].children[ROOT]) == 9  # width x expansions, not sized by the budget


def test_early_stop_fires_only_on_verified_chains_and_returns_the_rest():
    task = Game24("dev")
    results, _, _, trees = run_inprocess(
        "best_of_n", {}, Budget(generated_tokens=1500), n_problems=20, error_rate=0.5
    )
    problems = {p.id: p for p in task.problems()}
    stopped = [r for r in results if r.ledger.early_stops]
    assert stopped
    for r in results:
        tree, problem = trees[r.id], problems[r.id]
        verified = [n for n in tree.terminals() if task.check_solution(problem, tree.steps(n))]
        if r.ledger.early_stops:
            assert r.answer_node in verified and r.correct
            assert r.ledger.budget_returned == 1500 - r.ledger.policy_generated_tokens > 0
        else:
            assert not verified and r.ledger.budget_returned == 0
    never, _, _, _ = run_inprocess(
        "best_of_n", {}, Budget(generated_tokens=1500, early_stop="never"), n_problems=20, error_rate=0.5
    )
    assert not any(r.ledger.early_stops for r in never)
    assert sum(r.ledger.policy_generated_tokens for r in never) > sum(
        r.ledger.policy_generated_tokens for r in results
    )


def _tree_with_finished(scores_answers):
    tree = Tree("q\n", [1, 2], "p")
    for score, answer in scores_answers:
        (n,) = tree.add_children(ROOT, [Step(f"{answer} {score}", (3,), 0.0, True)])
        tree.prm_score[n], tree.answer[n] = score, answer
        assert tree.status[n] == TERMINAL
    return tree


def test_threshold_stop_needs_the_score_or_the_votes():
    task = Game24("dev")
    rule = StopRule(Budget(early_stop="threshold", stop_score=0.9, stop_votes=3), task)
    low = _tree_with_finished([(0.5, "a"), (0.6, "b"), (0.7, "a")])
    assert rule.threshold_answer(low, low.terminals()) is None
    high = _tree_with_finished([(0.5, "a"), (0.95, "b")])
    assert rule.threshold_answer(high, high.terminals()) == 2
    votes = _tree_with_finished([(0.5, "a"), (0.6, "b"), (0.7, "a"), (0.2, "a")])
    assert rule.threshold_answer(votes, votes.terminals()) == 3  # answer a thrice; its best chain
    unscored = _tree_with_finished([(math.nan, "a"), (math.nan, "a"), (math.nan, "a")])
    assert rule.threshold_answer(unscored, unscored.terminals()) is None


def test_stop_rule_auto_is_verified_only_where_the_task_has_a_check():
    math_task = SimpleNamespace(name="math")  # a task without check_solution
    assert StopRule(Budget(), Game24("dev")).mode == "verified"
    assert StopRule(Budget(), math_task).mode == "never"
    with pytest.raises(ValueError, match="no exact check"):
        StopRule(Budget(early_stop="verified"), math_task)


def test_job_budget_needs_one_unit():
    with pytest.raises(ValueError, match="one limited unit"):
        Budget(generated_tokens=10, nodes=5, scope="job")
    with pytest.raises(ValueError, match="one limited unit"):
        Budget(scope="job")


@pytest.mark.parametrize("algorithm", ["best_of_n", "beam", "mcts", "adaptive"])
def test_job_pool_is_never_overdrawn_every_problem_gets_its_floor_and_compute_moves(algorithm):
    n, share = 24, 300
    budget = Budget(generated_tokens=share, scope="job", floor=0.5, cap=3.0)
    results, _, _, trees = run_inprocess(algorithm, {}, budget, n_problems=n, error_rate=0.6)
    spent = [r.ledger.policy_generated_tokens for r in results]
    assert sum(spent) <= n * share  # the pool
    assert all(s <= 3.0 * share for s in spent)  # the cap
    assert all(trees[r.id].children[ROOT] for r in results)  # every problem searched its floor
    assert max(spent) > share  # compute freed by easy problems went to hard ones
    assert sum(spent) >= 0.8 * n * share  # and the pool was used
    per_problem, _, _, _ = run_inprocess(
        algorithm, {}, Budget(generated_tokens=share), n_problems=n, error_rate=0.6
    )
    assert max(r.ledger.policy_generated_tokens for r in per_problem) <= share


def test_pool_grants_by_priority_at_the_barrier_and_never_past_the_pool():
    async def scenario():
        pool = JobBudget(
            Budget(generated_tokens=100, scope="job", floor=0.5, cap=2.0, explore=0.0), ["a", "b", "c"]
        )
        assert [pool.first_round(p) for p in "abc"] == [50.0, 50.0, 50.0]
        ask_a = asyncio.ensure_future(pool.next_round("a", 50, promise=0.2))
        ask_b = asyncio.ensure_future(pool.next_round("b", 40, promise=0.9))
        await asyncio.sleep(0)
        assert not ask_a.done() and not ask_b.done()  # c is still searching: the barrier holds
        pool.finish("c", 10)  # c stopped early
        grants = await asyncio.gather(ask_a, ask_b)
        # free: 300 - (50 + 40 + 10) = 200; b (more promising) then a, a round (50) each
        assert grants == [50.0, 50.0] and pool.barriers == 1
        ask_a = asyncio.ensure_future(pool.next_round("a", 100, promise=0.2))
        ask_b = asyncio.ensure_future(pool.next_round("b", 90, promise=0.9))
        grants = await asyncio.gather(ask_a, ask_b)
        # free: 300 - 200 = 100; b first (promise) gets min(50, cap 200 - 90 = 110, 100) = 50,
        # a gets min(50, 100, 50) = 50 -> cap for a: 200 - 100 = 100
        assert grants == [50.0, 50.0]
        ask_a = asyncio.ensure_future(pool.next_round("a", 150, promise=0.2))
        ask_b = asyncio.ensure_future(pool.next_round("b", 110, promise=0.9))
        grants = await asyncio.gather(ask_a, ask_b)
        # free: 300 - 270 = 30: b first gets 30 (>= a quarter round), a nothing
        assert grants == [0.0, 30.0]
        pool.finish("a", 150)
        pool.finish("b", 140)
        assert sum(pool.spent.values()) <= pool.total

    asyncio.run(scenario())
