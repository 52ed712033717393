"""Composable verifiers: PRM scores times the rule check and (oracle) reachability."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from treesearch.backends.deterministic import ByteCounter, RulePRM
from treesearch.config import load_config
from treesearch.errors import ConfigError
from treesearch.job import resolve
from treesearch.protocol import ScoreRequest, ScoreResult
from treesearch.tasks import game24 as g24
from treesearch.tasks.game24 import Game24
from treesearch.verifiers import ProductScorer, compose, describe, passes

from .helpers import run_local

TASK = Game24("dev")
PROBLEM = TASK.problems()[0]
NUMS = PROBLEM.data["numbers"]


def chain(valid_steps: int, bad: str | None = None) -> tuple[str, ...]:
    """The first ``valid_steps`` steps of a solution, then ``bad`` (if given)."""
    steps = tuple(m.text() for m in g24.solve(g24.state_of(NUMS)))[:valid_steps]
    return (*steps, bad) if bad else steps


class ConstantPRM:
    num_parameters = 1.0
    counter = ByteCounter("\n")

    async def score(self, requests):
        return [
            ScoreResult(tuple(tuple(0.8 for _ in c) for c in r.chains), (7,) * len(r.chains))
            for r in requests
        ]


def test_rule_check_fails_made_up_arithmetic_and_everything_after():
    good = chain(3)
    assert passes(TASK, PROBLEM, good, ["rule"]) == [True, True, True]
    a, b = sorted(NUMS)[-2:]
    made_up = f"{b} + {a} = {a + b + 1} (left: 1 2 3)"
    assert passes(TASK, PROBLEM, (good[0], made_up, good[2]), ["rule"])[1:] == [False, False]


def test_reachability_is_stricter_than_rule():
    # A legal step that leaves 24 unreachable passes the rule check, not reachability.
    state = g24.state_of(NUMS)
    dead = next(m for m in g24.legal_moves(state) if not g24.reachable(m.left))
    steps = (dead.text(),)
    assert passes(TASK, PROBLEM, steps, ["rule"]) == [True]
    assert passes(TASK, PROBLEM, steps, ["rule", "reachability"]) == [False]


def test_product_scorer_zeroes_failed_steps_and_keeps_inner_tokens():
    a, b = sorted(NUMS)[-2:]
    bad = f"{b} * {a} = {a * b + 3} (left: 5)"
    req = ScoreRequest.one(PROBLEM.id, 1, PROBLEM.prompt, (*chain(1), bad))
    scorer = ProductScorer(ConstantPRM(), TASK, ["rule"], {PROBLEM.id: PROBLEM})
    (res,) = asyncio.run(scorer.score([req]))
    assert res.scores == ((0.8, 0.0),)
    assert res.tokens == (7,) and scorer.counter is ConstantPRM.counter
    inner = ConstantPRM()
    assert compose(inner, TASK, [], {PROBLEM.id: PROBLEM}) is inner
    with pytest.raises(ValueError, match="unknown check"):
        ProductScorer(inner, TASK, ["rules"], {PROBLEM.id: PROBLEM})


def test_rule_prm_with_reachability_equals_rule_times_reachability_check():
    reqs = [
        ScoreRequest.one(PROBLEM.id, i, PROBLEM.prompt, steps)
        for i, steps in enumerate([chain(1), chain(3), (chain(1)[0], "1 + 1 = 3 (left: 3)")])
    ]
    oracle = asyncio.run(RulePRM(TASK, reachability=True).score(reqs))
    composed = ProductScorer(RulePRM(TASK, reachability=False), TASK, ["reachability"], {PROBLEM.id: PROBLEM})
    assert [r.scores for r in asyncio.run(composed.score(reqs))] == [r.scores for r in oracle]
    together = ScoreRequest(PROBLEM.id, tuple(range(3)), PROBLEM.prompt, tuple(r.chains[0] for r in reqs))
    (res,) = asyncio.run(composed.score([together]))  # one request, three chains
    assert res.scores == tuple(r.scores[0] for r in oracle)


def test_labels_mark_every_oracle():
    def label(*overrides):
        return resolve(load_config(None, ["run.limit=1", *overrides])).verifier

    shepherd = ["prm.backend=math_shepherd", "generator.backend=vllm"]
    plain = SimpleNamespace(backend="math_shepherd", checks=["rule"])
    assert describe(plain, False) == ("math_shepherd x rule", False)
    text, oracle = label(*shepherd, "prm.checks=[rule, reachability]")
    assert oracle and text == "math_shepherd x rule x reachability (ORACLE: a ceiling)"
    assert label(*shepherd, "prm.checks=[rule]") == ("math_shepherd x rule", False)
    assert label("prm.reachability=true")[1]
    assert label("prm.reachability=false") == ("rule", False)
    assert label("prm.backend=mc_rollout")[1]


def test_job_with_checks_is_labelled_and_matches_the_oracle_prm(tmp_path):
    base = ["run.in_process=true", "run.limit=6", "task.split=dev", "algorithm.name=beam"]
    composed = load_config(None, [*base, "prm.reachability=false", "prm.checks=[reachability]"])
    oracle = load_config(None, [*base, "prm.reachability=true"])
    a = run_local(composed, tmp_path / "a")
    b = run_local(oracle, tmp_path / "b")
    assert a["verifier"] == "rule x reachability (ORACLE: a ceiling)" and a["oracle_verifier"]
    assert a["accuracy"] == b["accuracy"] and a["ledger"] == {
        **b["ledger"],
        "wall_seconds": a["ledger"]["wall_seconds"],
    }
    rows = [json.loads(x) for x in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6


def test_bad_checks_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"prm.checks\[0\]: 1 is not one of 'rule', 'reachability'"):
        resolve(load_config(None, ["prm.checks=[1]"]))
    cfg = load_config(None, ["run.in_process=true", "run.limit=2", "prm.checks=[rules]"])
    with pytest.raises(ConfigError, match=r"prm\.checks\[0\]: 'rules' is not one of 'rule', 'reachability'"):
        run_local(cfg, tmp_path / "x")
