"""Answer selection: aggregates and votes on a hand-built tree."""

import pytest

from treesearch.selection import chain_score, select_answer
from treesearch.tree import ROOT, Step, Tree


@pytest.fixture
def tree() -> Tree:
    t = Tree("q\n")
    a, b, c, d = t.add_children(ROOT, [Step("a"), Step("b"), Step("c"), Step("d")])
    a2, b2, c2, d2 = (t.add_children(n, [Step(f"{n}!", terminal=True)])[0] for n in (a, b, c, d))
    scores = {a: 0.9, a2: 0.5, b: 0.6, b2: 0.8, c: 0.2, c2: 0.99, d: 0.7, d2: 0.7}
    for n, s in scores.items():
        t.prm_score[n] = s
    t.answer[a2], t.answer[b2], t.answer[c2], t.answer[d2] = "x", "y", "z", "y"
    return t


def test_aggregates(tree):
    a2, b2, c2, d2 = 5, 6, 7, 8
    assert chain_score(tree, a2, "last") == 0.5
    assert chain_score(tree, a2, "min") == 0.5
    assert chain_score(tree, c2, "prod") == pytest.approx(0.2 * 0.99)
    cands = [a2, b2, c2, d2]
    assert select_answer(tree, cands, "last") == c2  # 0.99
    assert select_answer(tree, cands, "min") == d2  # min: .5 .6 .2 .7
    assert select_answer(tree, cands, "prod") == d2  # prod: .45 .48 .198 .49


def test_votes(tree):
    cands = [5, 6, 7, 8]
    assert select_answer(tree, cands, "vote") == 6  # "y" twice; best "y" chain by last: b2 .8
    # weighted by last: x .5, y .8 + .7 = 1.5, z .99
    assert select_answer(tree, cands, "weighted_vote", "last") == 6
    assert select_answer(tree, [5, 7], "weighted_vote", "last") == 7
    assert select_answer(tree, [], "vote") is None
    with pytest.raises(ValueError):
        select_answer(tree, cands, "median")


def test_unscored_chain_counts_as_zero(tree):
    (e,) = tree.add_children(ROOT, [Step("e", terminal=True)])
    assert chain_score(tree, e, "last") == 0.0
