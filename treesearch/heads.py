"""Distinct next steps for fewer tokens: sample only a step's *head*, merge copies, complete each.

Where the first tokens of a step decide it (Game of 24's operation ``4 + 8 =``, 7 of ~27
tokens), plain sampling pays in full for every copy of a step it draws again. Drawing ``k``
heads of ``head_tokens`` tokens, merging identical ones (with the heads earlier calls drew for
the node too) and completing each new head once from the prefix plus the head's exact ids (so
the prefix cache serves it) costs a copy its head instead of a whole step.
"""

from __future__ import annotations

from typing import Any

from treesearch.metered import GenerationAsk
from treesearch.protocol import ExpandResult, GeneratedStep


async def distinct_steps(ctx: Any, node: int, k: int, head_tokens: int) -> list[int]:
    """New children of ``node`` of the search ``ctx`` (a :class:`treesearch.context.SearchContext`;
    see module docstring): a head that ended its step is a child as
    it is, the others are completed; fewer, or none, where the budget refused. Without a head
    shorter than a step (``head_tokens`` 0), ``k`` whole steps."""
    if k <= 0 or not ctx.expandable(node):
        return []
    client = ctx.client
    if not 0 < head_tokens < client.max_step_tokens:
        return (await ctx.expand([node], k))[0]
    prefix = ctx.chains.prefix_ids(node)
    # heads count apart from whole expansions of the node (their own nonces), and are no nodes
    (heads,) = await client.generate(
        [GenerationAsk(node, prefix, k, ctx.nonce(node, -1), False)], head_tokens
    )
    if heads is None:
        return []
    seen = ctx.heads.setdefault(node, set())
    steps: list[GeneratedStep] = []  # new heads that ended their step, then completed ones
    partial: list[GeneratedStep] = []
    for s in heads.samples:
        if s.token_ids not in seen:
            seen.add(s.token_ids)
            (partial if s.finish_reason == "length" else steps).append(s)
    ctx.ledger.nodes += len(steps)  # completions count as nodes when they are booked
    rests = await client.generate(
        [GenerationAsk(node, prefix + h.token_ids, 1, 0) for h in partial],
        client.max_step_tokens - head_tokens,
    )
    for h, r in zip(partial, rests, strict=True):
        if r is not None and r.samples:
            rest = r.samples[0]
            ids = h.token_ids + rest.token_ids
            steps.append(GeneratedStep(h.text + rest.text, ids, h.logprob + rest.logprob, rest.finish_reason))
    return ctx.commit(node, ExpandResult(tuple(steps), 0, 0, 0, heads.replica)) if steps else []
