"""Per-node memo of a tree's chains: computed once per node, each from its parent's.

For every node the search touches, :class:`ChainMemo` keeps its chain of step texts, its
prefix (prompt + steps) as token-id bytes for the generator, and the PRM-token bound of its
chain for the budget. Pure bookkeeping over a :class:`~treesearch.tree.Tree` and a PRM's
:class:`~treesearch.protocol.TokenCounter`: no request, no budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from treesearch.protocol import CountState, GeneratedStep, TokenCounter, decode_ids, encode_ids
from treesearch.tasks.base import Problem, Task
from treesearch.tree import ROOT, Step, Tree


def as_steps(
    task: Task, problem: Problem, base: tuple[str, ...], samples: Sequence[GeneratedStep]
) -> list[tuple[Step, str | None]]:
    """Samples after the chain ``base`` as tree steps: whether each finishes its chain (the
    task says so, the model ended, or the depth limit), and the answer of each that does."""
    last = len(base) + 1 >= task.max_depth
    out = []
    for s in samples:
        chain = (*base, s.text)
        terminal = last or s.finish_reason == "eos" or task.is_terminal(problem, chain)
        step = Step(s.text, tuple(decode_ids(s.token_ids)), s.logprob, terminal)
        out.append((step, task.extract_answer(problem, chain) if terminal else None))
    return out


class ChainMemo:
    """Chains of one tree, memoised per node.

    Args:
      tree: the problem's tree (read only).
      counter: the PRM's token counter (bounds extended one step at a time).
      question: what the PRM's format puts before the steps.
      prompt: the generator's prompt.
    """

    __slots__ = ("_counts", "_prefix", "_step_ids", "_steps", "counter", "prompt", "question", "tree")

    def __init__(self, tree: Tree, counter: TokenCounter, question: str, prompt: str):
        self.tree, self.counter, self.question, self.prompt = tree, counter, question, prompt
        self._steps: dict[int, tuple[str, ...]] = {ROOT: ()}
        self._prefix: dict[int, bytes] = {ROOT: encode_ids(tree.token_ids[ROOT])}
        self._step_ids: dict[int, bytes] = {}  # a node's generated ids, as the generator sent them
        self._counts: dict[int, CountState] = {}

    def add(self, node: int, token_ids: bytes, chain: tuple[str, ...]) -> None:
        """A new node: its generated ids as the generator sent them, and its chain."""
        self._step_ids[node] = token_ids
        self._steps[node] = chain

    def steps(self, node: int) -> tuple[str, ...]:
        """The node's chain of step texts, root's first step first."""
        cached = self._steps.get(node)
        if cached is None:
            cached = self._steps[node] = (*self.steps(self.tree.parent[node]), self.tree.step_text[node])
        return cached

    def prefix_ids(self, node: int) -> bytes:
        """The node's prefix (prompt + steps) as :func:`~treesearch.protocol.encode_ids` bytes."""
        cached = self._prefix.get(node)
        if cached is None:
            step = self._step_ids.get(node)
            if step is None:
                step = encode_ids(self.tree.token_ids[node])
            cached = self._prefix[node] = self.prefix_ids(self.tree.parent[node]) + step
        return cached

    def count_state(self, node: int) -> CountState:
        """PRM-token bound of the chain root..node: its parent's (the exact count, once the
        parent was scored) extended by the node's own step."""
        state = self._counts.get(node)
        if state is None:
            if node == ROOT:
                state = self.counter.root(self.question, self.prompt)
            else:
                state = self.counter.extend(
                    self.count_state(self.tree.parent[node]), self.tree.step_text[node]
                )
            self._counts[node] = state
        return state

    def chain_bound(self, steps: tuple[str, ...]) -> int:
        """PRM-token bound of an explicit chain (not memoised: rollout chains leave the tree)."""
        state = self.counter.root(self.question, self.prompt)
        for s in steps:
            state = self.counter.extend(state, s)
        return state[0]

    def rebase(self, node: int, exact: int) -> None:
        """The PRM reported the exact count of the node's chain: its children extend that."""
        self._counts[node] = self.counter.rebase(self._counts[node], exact)  # counted when it was asked
