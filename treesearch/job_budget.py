"""One job-wide budget (``budget.scope: job``): compute goes to the problems still open.

With a per-problem budget an easy problem solved at its first depth and a hard one that no
chain has solved get the same cap. A :class:`JobBudget` holds the job's budget instead (the
per-problem limit x the number of problems, in the budget's unit) and hands it out in
*rounds*:

1. every problem's first round is ``floor x share`` (``share`` = the per-problem limit): the
   floors of all problems fit in the job budget, so none starves;
2. a search that ends its round without an answer its stop rule accepts (:mod:`treesearch.stopping`)
   asks for another round; once every open problem has asked or finished (a barrier, so the
   outcome does not depend on which search answered first), the askers are ranked by a
   UCT priority over problems (Kocsis & Szepesvari, 2006):

       priority_i = promise_i + explore * sqrt(ln(sum_j rounds_j) / rounds_i)

   where ``promise_i`` is the best PRM score among problem i's open nodes (its frontier's
   most promising prefix) and ``rounds_i`` the rounds it has had, and grants rounds of
   ``floor x share`` in that order while the budget has them, never taking a problem over
   ``cap x share``. A problem granted nothing ends with what its tree holds.

Compute a search does not spend (it stopped early, or its round ended below its grant) stays
in the job budget for the next barrier. The realised total never exceeds it: the grants of a
barrier add up to at most what is left after everything already spent.

Every problem of such a job is searched at once (its rounds are batched together, so the
engine is not serialised: a batch still carries every problem in a round); the priority is at
the granularity of a problem's round, not of a single node.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from treesearch.budget import Budget
from treesearch.context import SearchContext
from treesearch.selection import best_by_score
from treesearch.tree import TERMINAL, Tree

MIN_GRANT = 0.25  # a grant below this fraction of a round cannot finish a chain: none is made


@dataclass
class _Ask:
    promise: float
    spent: float
    order: int
    reply: asyncio.Future


class JobBudget:
    """The job's budget, shared by its problems (see module docstring).

    Attributes:
      unit: the shared unit (the budget's one limited unit besides seconds).
      share: the per-problem limit; ``total`` = ``share`` x problems.
      round: the size of every round (``floor x share``).
      cap: most one problem may spend (``cap x share``).
      rounds: rounds granted so far, per problem id.
      spent: what each problem has spent, as of its last ask or its end.
    """

    def __init__(self, budget: Budget, problem_ids: list[str]):
        unit = next(u for u in budget.limits() if u != "seconds")
        self.unit = unit
        self.share = float(budget.limits()[unit])
        self.total = self.share * len(problem_ids)
        self.round = budget.floor * self.share
        self.cap = budget.cap * self.share
        self.explore = budget.explore
        self._order = {pid: i for i, pid in enumerate(problem_ids)}
        self.rounds: dict[str, int] = {}
        self.spent: dict[str, float] = {}
        self._open = set(problem_ids)
        self._asks: dict[str, _Ask] = {}
        self.barriers = 0

    def first_round(self, problem_id: str) -> float:
        """The limit of a problem's first round (its floor)."""
        self.rounds[problem_id] = 1
        self.spent[problem_id] = 0.0
        return self.round

    @property
    def committed(self) -> float:
        """Spent so far plus the floors of problems not started yet."""
        unstarted = len(self._open) - len(self.rounds.keys() & self._open)
        return sum(self.spent.values()) + unstarted * self.round

    async def next_round(self, problem_id: str, spent: float, promise: float) -> float:
        """Asks for another round for a problem that has spent ``spent``; its grant (0: none)
        comes once every open problem has asked or finished."""
        self.spent[problem_id] = spent
        reply = asyncio.get_running_loop().create_future()
        self._asks[problem_id] = _Ask(promise, spent, self._order[problem_id], reply)
        self._maybe_grant()
        return await reply

    def finish(self, problem_id: str, spent: float) -> None:
        """A problem's search has ended (answered, failed or granted nothing)."""
        self.spent[problem_id] = spent
        self._open.discard(problem_id)
        ask = self._asks.pop(problem_id, None)
        if ask is not None and not ask.reply.done():
            ask.reply.set_result(0.0)
        self._maybe_grant()

    def _maybe_grant(self) -> None:
        if not self._asks or len(self._asks) < len(self._open):
            return  # the barrier: someone is still searching its round
        self.barriers += 1
        asks, self._asks = self._asks, {}
        free = self.total - self.committed
        total_rounds = sum(self.rounds.values())
        rank = lambda kv: (-self.priority(kv[1], kv[0], total_rounds), kv[1].order)  # noqa: E731
        ranked = sorted(asks.items(), key=rank)
        for pid, ask in ranked:
            grant = min(self.round, self.cap - ask.spent, free)
            if grant < MIN_GRANT * self.round:
                grant = 0.0
            else:
                free -= grant
                self.rounds[pid] += 1
            ask.reply.set_result(grant)

    def priority(self, ask: _Ask, problem_id: str, total_rounds: int) -> float:
        """UCT over problems: the frontier's promise plus an exploration bonus."""
        rounds = self.rounds[problem_id]
        return ask.promise + self.explore * math.sqrt(math.log(max(total_rounds, 1)) / rounds)


def promise(tree: Tree, expandable: Callable[[int], bool]) -> float:
    """The best PRM score among a tree's open (unfinished, expandable, scored) nodes; 0 if none."""
    best = 0.0
    score, status = tree.prm_score, tree.status
    for n in range(1, len(tree)):
        s = score[n]
        if s == s and s > best and status[n] != TERMINAL and expandable(n):
            best = s
    return best


async def search_in_rounds(
    budget: JobBudget, ctx: SearchContext, search: Callable[[], Awaitable[int | None]]
) -> int | None:
    """Runs ``search`` on ``ctx`` round after round while the job budget grants them; the
    answer is the one the stop rule ended it with, else the best-scored of the rounds'
    answers. The caller calls ``budget.finish`` however this ends."""
    guard, tree, pid = ctx.guard, ctx.tree, ctx.problem.id
    answers = [await search()]
    before = -1.0
    while ctx.stopped_with is None:
        spent = guard.spent.value(budget.unit)
        if spent == before:  # the last round spent nothing: the search has no use for more
            break
        grant = await ctx.await_external(budget.next_round(pid, spent, promise(tree, ctx.expandable)))
        if grant <= 0:
            break
        before = spent
        guard.set_limit(budget.unit, spent + grant)
        ctx.new_round()
        answers.append(await search())
    if ctx.stopped_with is not None:
        return ctx.stopped_with
    return best_by_score(tree, [a for a in answers if a is not None])
