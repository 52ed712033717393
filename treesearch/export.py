"""Export search trees: JSON (documented schema), GraphML (networkx) and DOT (graphviz).

JSON document, ``version`` 1::

    {"version": 1,
     "problem": {"id": str, "prompt": str},
     "result":  {"answer": str|null, "answer_node": int|null, "correct": bool|null} | null,
     "commits": int,                      # expansions committed (the last created_step + 1)
     "nodes": [                           # index = node id; parents come before children
       {"id": int, "parent": int,         # -1 for the root
        "depth": int, "step": str,        # the root's "step" is the prompt
        "token_ids": [int], "tokens": int,
        "logprob": float, "prior": float, # step log-probability; softmax over its expansion
        "prm_score": float|null,          # null until scored
        "visits": int, "value_sum": float, "value": float,   # value = value_sum / visits
        "uct": float|null,                # UCT (c = sqrt 2) w.r.t. the parent at the end (null: root,
                                          # unvisited)
        "virtual_loss": int,
        "status": "open"|"terminal"|"pruned",
        "answer": str|null,               # a terminal node's final answer
        "correct": bool|null,             # ground truth for terminal nodes (null if unknown)
        "created_step": int,              # creation order: replay grows the tree by it
        "replica": int}]}                 # generator replica that made it, -1 if in-process

:func:`tree_from_json_doc` rebuilds the exact :class:`~treesearch.tree.Tree`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from treesearch.errors import ConfigError
from treesearch.policies import uct_value
from treesearch.tree import NO_PARENT, STATUS_NAMES, Tree

EXPORT_VERSION = 1
CorrectFn = Callable[[Sequence[str]], bool]


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def to_json_doc(
    tree: Tree, result: dict[str, Any] | None = None, is_correct: CorrectFn | None = None
) -> dict:
    """The JSON document of ``tree`` (see module docstring)."""
    nodes = []
    for n in range(len(tree)):
        visits, parent = tree.visits[n], tree.parent[n]
        uct = uct_value(tree, parent, n) if parent != NO_PARENT and visits else None
        terminal = STATUS_NAMES[tree.status[n]] == "terminal"
        nodes.append(
            {
                "id": n,
                "parent": parent,
                "depth": tree.depth[n],
                "step": tree.step_text[n],
                "token_ids": list(tree.token_ids[n]),
                "tokens": len(tree.token_ids[n]),
                "logprob": tree.logprob[n],
                "prior": tree.prior[n],
                "prm_score": _num(tree.prm_score[n]),
                "visits": visits,
                "value_sum": tree.value_sum[n],
                "value": tree.value_sum[n] / visits if visits else 0.0,
                "uct": None if uct is None or math.isinf(uct) else uct,
                "virtual_loss": tree.virtual_loss[n],
                "status": STATUS_NAMES[tree.status[n]],
                "answer": tree.answer[n],
                "correct": is_correct(tree.steps(n)) if terminal and is_correct else None,
                "created_step": tree.created_step[n],
                "replica": tree.replica[n],
            }
        )
    res = None
    if result is not None:
        res = {k: result.get(k) for k in ("answer", "answer_node", "correct")}
    return {
        "version": EXPORT_VERSION,
        "problem": {"id": tree.problem_id, "prompt": tree.step_text[0]},
        "result": res,
        "commits": tree.commits,
        "nodes": nodes,
    }


def tree_from_json_doc(doc: dict) -> Tree:
    """Inverse of :func:`to_json_doc`."""
    if doc.get("version") != EXPORT_VERSION:
        raise ValueError(f"unsupported export version {doc.get('version')}")
    nodes = doc["nodes"]
    d = {
        "problem_id": doc["problem"]["id"],
        "commits": doc["commits"],
        "step_text": [x["step"] for x in nodes],
        "token_ids": [x["token_ids"] for x in nodes],
        "answer": [x["answer"] for x in nodes],
        "prm_score": [math.nan if x["prm_score"] is None else x["prm_score"] for x in nodes],
        "status": [STATUS_NAMES.index(x["status"]) for x in nodes],
    }
    for f in (
        "parent",
        "depth",
        "visits",
        "value_sum",
        "virtual_loss",
        "logprob",
        "prior",
        "created_step",
        "replica",
    ):
        d[f] = [x[f] for x in nodes]
    return Tree.from_dict(d)


def _networkx():
    try:
        import networkx
    except ImportError as e:
        raise ConfigError(
            "GraphML export needs networkx: pip install 'treesearch[export]' (also in [ray] and [vllm])"
        ) from e
    return networkx


def to_networkx(doc: dict):
    """A ``networkx.DiGraph`` with typed attributes (GraphML has no null: NaN / "" stand in)."""
    nx = _networkx()

    g = nx.DiGraph(problem_id=doc["problem"]["id"], prompt=doc["problem"]["prompt"])
    for x in doc["nodes"]:
        g.add_node(
            x["id"],
            depth=x["depth"],
            step=x["step"],
            tokens=x["tokens"],
            logprob=float(x["logprob"]),
            prior=float(x["prior"]),
            prm_score=math.nan if x["prm_score"] is None else float(x["prm_score"]),
            visits=x["visits"],
            value=float(x["value"]),
            status=x["status"],
            answer=x["answer"] or "",
            correct=bool(x["correct"]),
            created_step=x["created_step"],
            replica=x["replica"],
        )
        if x["parent"] != NO_PARENT:
            g.add_edge(x["parent"], x["id"])
    return g


def to_graphml(doc: dict) -> str:
    return "\n".join(_networkx().generate_graphml(to_networkx(doc)))


def _dot_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_dot(doc: dict) -> str:
    """graphviz DOT: nodes labelled by step and score, coloured by PRM score, answer path bold."""
    chosen = set()
    res = doc.get("result") or {}
    if res.get("answer_node") is not None:
        n = res["answer_node"]
        while n != NO_PARENT:
            chosen.add(n)
            n = doc["nodes"][n]["parent"]
    lines = [f'digraph "{_dot_escape(doc["problem"]["id"])}" {{', "  node [shape=box, style=filled];"]
    for x in doc["nodes"]:
        score = x["prm_score"]
        color = "#dddddd" if score is None else _score_color(score)
        label = x["step"] if score is None else f"{x['step']}\n{score:.2f}"
        extra = ", penwidth=3" if x["id"] in chosen else ""
        lines.append(f'  n{x["id"]} [label="{_dot_escape(label)}", fillcolor="{color}"{extra}];')
        if x["parent"] != NO_PARENT:
            lines.append(f"  n{x['parent']} -> n{x['id']};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _score_color(score: float) -> str:
    """Red (0) to green (1)."""
    s = min(1.0, max(0.0, score))
    return f"#{int(230 * (1 - s)) + 25:02x}{int(200 * s) + 40:02x}50"
