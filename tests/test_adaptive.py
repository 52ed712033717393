"""Distinct first steps for fewer tokens (``SearchContext.expand_distinct``) and ``adaptive``,
which draws its first steps that way."""

import asyncio
import itertools

import pytest

from treesearch.backends.deterministic import ByteTokenizer, RulePRM
from treesearch.budget import Budget
from treesearch.errors import ConfigError
from treesearch.protocol import ExpandResult, GeneratedStep, decode_ids, encode_ids
from treesearch.tasks.game24 import Game24
from treesearch.tree import ROOT

from .helpers import run_inprocess, run_search

EIGHT, SIX, FOUR = "4 + 8 = 12 (left: 6 12 13)", "13 - 6 = 7 (left: 4 7 8)", "6 * 4 = 24 (left: 8 13 24)"


class ScriptedSteps:
    """A generator that samples the steps of ``script`` in turn, cut at a request's token cap
    (``length``), and completes a step begun in the prompt with the rest of the script's step
    that begins so. Byte tokens: a step of n characters is n tokens, its delimiter one more."""

    num_parameters = 1e6

    def __init__(self, script: list[str]):
        self.tok, self.script, self.next = ByteTokenizer(), script, itertools.cycle(script)
        self.requests: list = []

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def sample(self, text: str, cap: int) -> GeneratedStep:
        ids = self.tok.encode(text + "\n")
        if len(ids) > cap:
            return GeneratedStep(text[:cap], encode_ids(ids[:cap]), -1.0, "length")
        return GeneratedStep(text, encode_ids(ids), -1.0, "stop")

    async def generate(self, requests) -> list[ExpandResult]:
        out = []
        for r in requests:
            self.requests.append(r)
            begun = self.tok.decode(decode_ids(r.prompt_ids)).split("\n")[-1]
            if begun:
                rest = next(s for s in self.script if s.startswith(begun))[len(begun) :]
                samples = [self.sample(rest, r.max_tokens)]
            else:
                samples = [self.sample(next(self.next), r.max_tokens) for _ in range(r.k)]
            generated = sum(len(decode_ids(s.token_ids)) for s in samples)
            out.append(ExpandResult(tuple(samples), len(decode_ids(r.prompt_ids)), 0, generated))
        return out


def search_with(gen, search, budget: Budget):
    task = Game24("dev")
    trees = {}
    results, _, _ = asyncio.run(
        run_search(
            [Game24.problem((4, 6, 8, 13))], task, search, gen, RulePRM(task), budget,
            max_step_tokens=40, on_result=lambda r, t: trees.__setitem__(r.id, t),
        )
    )  # fmt: skip
    (result,) = results
    return result, trees[result.id]


def test_expand_distinct_completes_each_new_head_once_and_books_what_it_drew():
    gen = ScriptedSteps([EIGHT, EIGHT, SIX, EIGHT, FOUR, SIX])
    seen: dict[str, list[int]] = {}

    async def search(ctx):
        seen["first"] = await ctx.expand_distinct(ROOT, 6, 7)
        seen["again"] = await ctx.expand_distinct(ROOT, 3, 7)  # EIGHT, EIGHT, SIX: heads seen before
        return None

    result, tree = search_with(gen, search, Budget(generated_tokens=1000, early_stop="never"))
    assert [tree.step_text[c] for c in seen["first"]] == [EIGHT, SIX, FOUR]
    assert seen["again"] == [] and tree.children[ROOT] == seen["first"]
    # 6 heads of 7 tokens, one completion per distinct head, 3 more heads; no step drawn whole
    heads, rests = 9 * 7, sum(len(s) + 1 - 7 for s in (EIGHT, SIX, FOUR))
    assert result.ledger.policy_generated_tokens == heads + rests < 6 * (len(EIGHT) + 1)
    assert [(r.k, r.max_tokens) for r in gen.requests] == [(6, 7), (1, 33), (1, 33), (1, 33), (3, 7)]
    assert result.ledger.nodes == 3 and result.ledger.generator_calls == 5
    for c in seen["first"]:  # a child's ids are its head's then its rest's: the prefix cache sees them
        assert list(tree.token_ids[c]) == ByteTokenizer().encode(tree.step_text[c] + "\n")


def test_expand_distinct_reserves_a_head_per_sample_and_never_overspends():
    gen = ScriptedSteps([EIGHT, SIX, FOUR])
    seen: dict[str, object] = {}

    async def search(ctx):
        seen["kids"] = await ctx.expand_distinct(ROOT, 6, 7)
        seen["exhausted"] = ctx.exhausted
        return None

    # 6 heads reserve 42 tokens (whole steps would reserve 40 each: one would fit); the 33 a
    # completion reserves do not fit in the 18 left
    result, _ = search_with(gen, search, Budget(generated_tokens=60, early_stop="never"))
    assert gen.requests[0].k == 6 and len(gen.requests) == 1
    assert seen["kids"] == [] and seen["exhausted"] and result.ledger.policy_generated_tokens == 42


def test_a_head_that_ends_its_step_is_a_child_as_it_is():
    gen = ScriptedSteps(["7", EIGHT])

    async def search(ctx):
        return (await ctx.expand_distinct(ROOT, 2, 7))[0]

    result, tree = search_with(gen, search, Budget(generated_tokens=1000, early_stop="never"))
    assert [tree.step_text[c] for c in tree.children[ROOT]] == ["7", EIGHT]
    assert [(r.k, r.max_tokens) for r in gen.requests] == [(2, 7), (1, 33)]
    assert result.ledger.nodes == 2


def test_adaptive_draws_distinct_first_steps_where_the_task_names_a_head():
    """Every problem hard (``easy_score`` over any score): the root's whole share is drawn, as
    heads (the task's ``4 + 8 =``, 7 byte tokens) or as whole steps."""
    budget = Budget(generated_tokens=600, early_stop="never")
    heads, _, _, h_trees = run_inprocess("adaptive", {"easy_score": 2.0}, budget, n_problems=12)
    whole, _, _, w_trees = run_inprocess(
        "adaptive", {"easy_score": 2.0, "head_tokens": 0}, budget, n_problems=12
    )
    assert Game24.step_head == "4 + 8 =" and len(ByteTokenizer().encode(Game24.step_head)) == 7

    def firsts(trees, r):
        return [trees[r.id].step_text[c] for c in trees[r.id].children[ROOT]]

    for r in heads:
        assert len({s[:7] for s in firsts(h_trees, r)}) == len(firsts(h_trees, r))  # one step per head
        assert r.ledger.policy_generated_tokens <= 600
    copies = sum(len(firsts(w_trees, r)) - len(set(firsts(w_trees, r))) for r in whole)
    assert copies > 0  # whole steps: copies drawn (and paid for) whole
    assert sum(len(firsts(h_trees, r)) for r in heads) > sum(len(set(firsts(w_trees, r))) for r in whole)


def test_adaptive_rejects_a_negative_head():
    with pytest.raises(
        ConfigError, match=r"algorithm.head_tokens: -1 is not an integer in \[0, 1000000\] or 'auto'"
    ):
        run_inprocess("adaptive", {"head_tokens": -1}, Budget(generated_tokens=300), n_problems=1)
