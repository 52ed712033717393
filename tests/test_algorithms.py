"""Every algorithm: solve rates against best-of-N at matched budget, determinism, specifics."""

import math
from pathlib import Path

import pytest

from treesearch.budget import Budget
from treesearch.config import load_config
from treesearch.tree import OPEN, PRUNED, TERMINAL, trees_equal

from .helpers import ALGO_PARAMS, run_inprocess, run_local

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def headline(tmp_path_factory):
    """The shipped configs on the integer-only test puzzles (99 of the 100), error rate 0.7,
    2,000 generated tokens per puzzle, rule PRM (verifier + reachability oracle). No early
    stop: best-of-N spends its whole budget, so "matched compute" is compute spent."""
    out = {}
    for algo in ("best_of_n", "beam", "tot_bfs", "mcts"):
        cfg = load_config(
            CONFIGS / f"game24-{algo}.yaml", ["task.integer_only=true", "budget.early_stop=never"]
        )
        assert cfg.generator["error_rate"] == 0.7 and cfg.budget.generated_tokens == 2000
        out[algo] = run_local(cfg, tmp_path_factory.mktemp(algo))
    return out


@pytest.mark.parametrize("algo", ["beam", "tot_bfs", "mcts"])
def test_search_solves_95_percent_where_best_of_n_does_not(headline, algo):
    s, bon = headline[algo], headline["best_of_n"]
    assert s["n_problems"] == bon["n_problems"] == 99
    assert s["accuracy"] >= 0.95
    assert bon["accuracy"] <= 0.80 and s["accuracy"] - bon["accuracy"] >= 0.15
    # matched compute: best-of-N spent at least as many generated tokens as the search
    assert bon["ledger"]["policy_generated_tokens"] >= s["ledger"]["policy_generated_tokens"]
    assert s["ledger"]["policy_generated_tokens"] <= 2000 * 99


@pytest.mark.parametrize("algorithm", sorted(ALGO_PARAMS))
def test_same_seed_same_trees_other_seed_other_trees(algorithm):
    r1, j1, _, t1 = run_inprocess(algorithm, seed=3)
    r2, j2, _, t2 = run_inprocess(algorithm, seed=3)
    assert [r.to_json() | {"ledger": None} for r in r1] == [r.to_json() | {"ledger": None} for r in r2]
    assert all(trees_equal(t1[k], t2[k]) for k in t1)
    assert j1.policy_generated_tokens == j2.policy_generated_tokens
    _, _, _, t3 = run_inprocess(algorithm, seed=4)
    assert not all(trees_equal(t1[k], t3[k]) for k in t1)


@pytest.mark.parametrize("algorithm", sorted(ALGO_PARAMS))
def test_every_algorithm_answers_with_a_terminal_node(algorithm):
    results, _, _, trees = run_inprocess(algorithm, error_rate=0.3)
    assert sum(r.correct for r in results) >= len(results) // 2
    for r in results:
        assert r.covered >= r.correct
        if r.answer_node is not None:
            t = trees[r.id]
            assert t.status[r.answer_node] == TERMINAL and r.answer == t.answer[r.answer_node]


def test_best_of_n_votes_and_wave_limit():
    results, job, _, trees = run_inprocess("best_of_n", {"n": 8, "wave": 3, "selection": "vote"})
    for r in results:
        starts = trees[r.id].children[0]
        assert len(starts) == 8  # waves of 3, 3, 2
    assert job.prm_calls == sum(len(t.terminals()) for t in trees.values())


def test_beam_prunes_to_width():
    _, _, _, trees = run_inprocess("beam", {"width": 2, "expansions": 3}, error_rate=0.6)
    assert len(trees) == 6
    for t in trees.values():
        for depth in (1, 2):  # open chains beyond the width are pruned (terminal ones stay terminal)
            at_depth = [n for n in range(len(t)) if t.depth[n] == depth]
            kept = [n for n in at_depth if t.status[n] == OPEN]
            dropped = [n for n in at_depth if t.status[n] in (PRUNED, TERMINAL)]
            assert len(kept) <= 2 and len(at_depth) == 6 and len(dropped) >= 4  # 2 chains x 3 samples


def test_beam_root_expansions_seed_the_beam():
    _, _, _, trees = run_inprocess("beam", {"width": 2, "expansions": 2, "root_expansions": 7})
    for t in trees.values():
        assert len(t.children[0]) == 7  # not width * expansions = 4
        assert all(len(t.children[n]) in (0, 2) for n in t.children[0])


def test_beam_dedup_merges_identical_chains_before_scoring():
    def scored_copies(t):  # scored nodes whose chain equals an earlier scored node's
        chains = [tuple(t.steps(n)) for n in range(1, len(t)) if not math.isnan(t.prm_score[n])]
        return len(chains) - len(set(chains))

    _, _, _, plain = run_inprocess("beam", {"width": 3, "expansions": 4}, error_rate=0.2)
    _, _, _, merged = run_inprocess("beam", {"width": 3, "expansions": 4, "dedup": True}, error_rate=0.2)
    assert sum(scored_copies(t) for t in plain.values()) > 0  # the policy does repeat itself
    assert all(scored_copies(t) == 0 for t in merged.values())  # copies never reach the PRM


def test_dvts_keeps_one_head_per_subtree():
    _, _, _, trees = run_inprocess("dvts", {"n_subtrees": 3, "expansions": 4})
    for t in trees.values():
        assert len(t.children[0]) == 12  # 3 subtrees x 4 samples at the root
        for depth in (1, 2):
            alive = [n for n in range(len(t)) if t.depth[n] == depth and t.status[n] == OPEN]
            assert len(alive) <= 3


def test_tot_dfs_prunes_below_threshold_and_stops_at_first_solution():
    results, _, _, trees = run_inprocess("tot_dfs", {"samples": 4, "threshold": 0.5})
    for r in results:
        t = trees[r.id]
        for n in range(1, len(t)):
            if t.children[n]:  # DFS only descends into states valued at or above v_th
                assert t.prm_score[n] >= 0.5 and t.status[n] != PRUNED
        if r.correct:  # DFS stopped there: passing finished chains all come from that expansion
            passing = [n for n in t.terminals() if t.prm_score[n] >= 0.5]
            assert {t.parent[n] for n in passing} == {t.parent[r.answer_node]}
            assert max(t.created_step[n] for n in range(len(t))) == t.created_step[r.answer_node]


@pytest.mark.parametrize("policy", ["uct", "puct"])
def test_mcts_visits_are_consistent(policy):
    _, _, _, trees = run_inprocess(
        "mcts", {"simulations": 16, "parallel": 4, "expansions": 3, "policy": policy}
    )
    for t in trees.values():
        assert list(t.virtual_loss) == [0] * len(t)
        for n in range(len(t)):
            assert t.visits[n] >= sum(t.visits[c] for c in t.children[n])
        assert t.visits[0] >= len(t) - 1  # every new child was backed up once


def test_mcts_rollout_evaluation_counts_rollout_tokens():
    _results, job, _, trees = run_inprocess(
        "mcts",
        {"simulations": 8, "parallel": 2, "expansions": 2, "evaluation": "rollout"},
        budget=Budget(generated_tokens=4000),
    )
    in_trees = sum(len(t.token_ids[n]) for t in trees.values() for n in range(1, len(t)))
    assert job.policy_generated_tokens > in_trees  # rollout steps are paid for, not kept
    assert (
        job.prm_calls
        > sum(1 for t in trees.values() for n in range(1, len(t)) if not math.isnan(t.prm_score[n])) // 3
    )
