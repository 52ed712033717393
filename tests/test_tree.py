"""Tree store: hand-computed UCT / PUCT / backup on a saved tree, invariants, round trips."""

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treesearch.policies import progressive_widening, puct_value, select_leaf, uct_value
from treesearch.tree import NO_PARENT, PRUNED, ROOT, TERMINAL, Step, Tree, trees_equal

SMALL = Path(__file__).parent / "data" / "small_tree.json"


@pytest.fixture
def small() -> Tree:
    # root(N=4, W=2.9) -> c1(N=3, W=2.0) -> g1(N=2, W=1.5), g2(N=1, W=0.5)
    #                  -> c2(N=1, W=0.9), c3(N=0)
    # step log-probs: c1 -0.5, c2 -1.0, c3 -2.0; g1 -0.25, g2 -1.25
    return Tree.from_json(SMALL.read_text())


def test_saved_tree_fields(small):
    assert list(small.parent) == [NO_PARENT, 0, 0, 0, 1, 1]
    assert list(small.depth) == [0, 1, 1, 1, 2, 2]
    assert list(small.visits) == [4, 3, 1, 0, 2, 1]
    assert small.children[ROOT] == [1, 2, 3] and small.children[1] == [4, 5]
    # priors = softmax(-0.5, -1, -2): e^-0.5=.606531, e^-1=.367879, e^-2=.135335, sum 1.109745
    assert [round(small.prior[i], 6) for i in (1, 2, 3)] == [0.546549, 0.331499, 0.121952]
    assert small.path(5) == [0, 1, 5]
    assert small.steps(4) == ["10 - 4 = 6 (left: 5 6 6)", "6 * 5 = 30 (left: 6 30)"]
    assert small.prefix_token_ids(4) == [52, 32, 53, 32, 54, 32, 49, 48, 10, 1, 2, 6]
    assert math.isnan(small.prm_score[3])


def test_uct_hand_computed(small):
    # UCT = Q + sqrt(2) * sqrt(ln N_parent / N_child); ln 4 = 1.3862944
    # c1: 2/3 + 1.4142136 * sqrt(1.3862944 / 3) = 0.6666667 + 1.4142136 * 0.6797780
    #     = 0.6666667 + 0.9613513 = 1.6280179
    assert uct_value(small, 0, 1) == pytest.approx(1.6280179, abs=1e-6)
    # c2: 0.9 + 1.4142136 * sqrt(1.3862944) = 0.9 + 1.6651092 = 2.5651092
    assert uct_value(small, 0, 2) == pytest.approx(2.5651092, abs=1e-6)
    assert uct_value(small, 0, 3) == math.inf  # unvisited
    assert uct_value(small, 0, 1, c=0.0) == pytest.approx(2 / 3)


def test_puct_hand_computed(small):
    # PUCT = Q + 1.25 * P * sqrt(N_parent) / (1 + N_child); sqrt(4) = 2
    # c1: 0.6666667 + 1.25 * 0.5465494 * 2 / 4 = 0.6666667 + 0.3415934 = 1.0082601
    assert puct_value(small, 0, 1) == pytest.approx(1.0082601, abs=1e-6)
    # c2: 0.9 + 1.25 * 0.3314990 * 2 / 2 = 1.3143737
    assert puct_value(small, 0, 2) == pytest.approx(1.3143737, abs=1e-6)
    # c3: 0 + 1.25 * 0.1219517 * 2 / 1 = 0.3048791
    assert puct_value(small, 0, 3) == pytest.approx(0.3048791, abs=1e-6)
    # g1 under c1 (N=3): 0.75 + 1.25 * 0.7310586 * 1.7320508 / 3 = 0.75 + 0.5275961 = 1.2775961
    assert puct_value(small, 1, 4) == pytest.approx(1.2775961, abs=1e-6)


def test_select_with_virtual_loss_then_backup(small):
    puct = lambda t, p, c: puct_value(t, p, c, c=1.25)  # noqa: E731
    assert select_leaf(small, puct) == [0, 2]  # c2 has the highest PUCT (1.3143737)
    assert small.virtual_loss[0] == 1 and small.virtual_loss[2] == 1
    # With the virtual loss, root N_eff = 5 (sqrt 2.2360680), c2: Q = 0.9/2 = 0.45,
    # c2: 0.45 + 1.25*0.3314990*2.2360680/3 = 0.7588559 < c1: 0.6666667 + 1.25*0.5465494*2.2360680/4
    # = 1.0485797; at c1 (N_eff 4): g1 0.75 + 1.25*0.7310586*2/3 = 1.3592155 > g2 0.5 + 1.25*0.2689414
    # = 0.8361768.
    assert select_leaf(small, puct) == [0, 1, 4]
    small.backup(2, 0.4, virtual_loss=1)
    small.backup(4, 1.0, virtual_loss=1)
    assert list(small.virtual_loss) == [0] * 6
    assert list(small.visits) == [6, 4, 2, 0, 3, 1]
    assert small.value_sum[0] == pytest.approx(2.9 + 0.4 + 1.0)
    assert small.value_sum[1] == pytest.approx(3.0) and small.value_sum[2] == pytest.approx(1.3)
    assert small.q_value(4) == pytest.approx(2.5 / 3)


def test_uct_selects_unvisited_first(small):
    assert select_leaf(small, uct_value) == [0, 3]


def test_progressive_widening_caps_children(small):
    widen = progressive_widening(expansions=2, c=0.5, alpha=0.5, can_expand=lambda n: True)
    # root: N=4 -> max(1, floor(0.5*2)) = 1 expansion = 2 children < 3 held: no widening
    assert not widen(small, 0)
    small.visits[0] = 36  # floor(0.5 * 6) = 3 expansions = 6 children > 3 held
    assert widen(small, 0)
    assert select_leaf(small, puct_value, widen=widen) == [0]


def test_add_children_validation(small):
    with pytest.raises(IndexError):
        small.add_children(99, [Step("x")])
    (t,) = small.add_children(3, [Step("done", terminal=True)])
    assert small.status[t] == TERMINAL and small.created_step[t] == 2
    with pytest.raises(ValueError):
        small.add_children(t, [Step("after the end")])
    with pytest.raises(ValueError):
        small.backup(t, math.nan)


def test_round_trips_are_exact(small):
    small.prune(3)
    small.answer[5] = "an answer"
    assert small.status[3] == PRUNED
    assert trees_equal(Tree.from_msgpack(small.to_msgpack()), small)
    assert trees_equal(Tree.from_json(small.to_json()), small)
    assert Tree.from_json(small.to_json()).children == small.children


# --------------------------------------------------------------------------- properties
ops = st.lists(
    st.tuples(
        st.sampled_from(["expand", "backup", "select", "prune"]),
        st.integers(0, 10_000),
        st.lists(st.floats(-20, 0, allow_nan=False), min_size=1, max_size=4),
        st.floats(0, 1),
    ),
    max_size=60,
)


def _random_tree(seq) -> tuple[Tree, dict[int, int]]:
    tree = Tree("p\n", [1, 2])
    ended_here: dict[int, int] = {}
    for op, pick, logps, x in seq:
        node = pick % len(tree)
        if op == "expand" and tree.status[node] != TERMINAL:
            steps = [Step(f"s{len(tree)}-{i}", (i,), lp, terminal=x > 0.8) for i, lp in enumerate(logps)]
            tree.add_children(node, steps)
        elif op == "backup":
            tree.backup(node, x)
            ended_here[node] = ended_here.get(node, 0) + 1
        elif op == "select":
            leaf = select_leaf(tree, puct_value)[-1]
            tree.backup(leaf, x, virtual_loss=1)
            ended_here[leaf] = ended_here.get(leaf, 0) + 1
        elif op == "prune":
            tree.prune(node)
    return tree, ended_here


@settings(max_examples=200, deadline=None)
@given(ops)
def test_tree_invariants(seq):
    tree, ended_here = _random_tree(seq)
    for n in range(len(tree)):
        p = tree.parent[n]
        assert (p == NO_PARENT) == (n == ROOT)
        assert p < n  # parent before child (append-only)
        if p != NO_PARENT:
            assert tree.depth[n] == tree.depth[p] + 1
        # visits = own backups + sum over children
        assert tree.visits[n] == ended_here.get(n, 0) + sum(tree.visits[c] for c in tree.children[n])
        assert math.isfinite(tree.value_sum[n]) and 0 <= tree.value_sum[n] <= tree.visits[n]
        assert tree.virtual_loss[n] == 0
        assert math.isfinite(tree.prior[n])
    for n in range(1, len(tree)):
        siblings = [c for c in tree.children[tree.parent[n]] if tree.created_step[c] == tree.created_step[n]]
        assert sum(tree.prior[c] for c in siblings) == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(ops, st.text(max_size=30))
def test_serialisation_round_trips(seq, answer):
    tree, _ = _random_tree(seq)
    tree.answer[len(tree) - 1] = answer or None
    tree.prm_score[0] = 0.25
    assert trees_equal(Tree.from_msgpack(tree.to_msgpack()), tree)
    assert trees_equal(Tree.from_json(tree.to_json()), tree)
