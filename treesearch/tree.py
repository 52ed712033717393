"""The search tree: one per problem, parallel arrays indexed by integer node id.

Layout follows google-deepmind/mctx: node ``ROOT = 0`` is the prompt, every other node is one
reasoning step appended to its parent's prefix, ``NO_PARENT = -1`` marks the root's parent.
The tree is append-only (nodes are never removed, only marked ``PRUNED``) and has variable
branching, so children live in a side table rather than a dense ``[nodes, actions]`` array.

Scalar fields are :mod:`array` typed arrays: 4-8 bytes per node per field, O(1) append and
a lossless byte dump for msgpack. Per-node Python objects (step text, token ids) live in
side lists.

Value convention: ``value_sum`` accumulates values in [0, 1] (PRM scores or rollout outcomes),
``visits`` counts backups through a node, ``virtual_loss`` counts simulations currently in
flight through a node (each counts as one visit of value 0 until it is backed up).
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

ROOT = 0
NO_PARENT = -1

# Node status codes (int8 in ``Tree.status``).
OPEN = 0  # may be expanded
TERMINAL = 1  # the step ended the chain (final answer or end of sequence)
PRUNED = 2  # dropped by the search (invalid, below threshold, or out of the beam)
STATUS_NAMES = ("open", "terminal", "pruned")

JSON_VERSION = 1
MSGPACK_VERSION = 1

# (field name, array typecode, default for a new node). Order is the serialisation order.
_SCALAR_FIELDS: tuple[tuple[str, str], ...] = (
    ("parent", "i"),
    ("depth", "i"),
    ("visits", "i"),
    ("value_sum", "d"),
    ("virtual_loss", "i"),
    ("logprob", "d"),
    ("prior", "d"),
    ("prm_score", "d"),
    ("status", "b"),
    ("created_step", "i"),
    ("replica", "i"),
)


@dataclass(frozen=True, slots=True)
class Step:
    """One generated reasoning step, as a generator returns it.

    Attributes:
      text: the step's text, delimiter excluded.
      token_ids: the generated token ids of the step (delimiter excluded).
      logprob: sum of the token log-probabilities of the step (natural log).
      terminal: True when this step ends the chain (answer given, EOS, or depth limit).
    """

    text: str
    token_ids: tuple[int, ...] = ()
    logprob: float = 0.0
    terminal: bool = False


class Tree:
    """A search tree over reasoning steps.

    Attributes (all indexed by node id, length ``len(tree)``):
      parent: parent id, ``NO_PARENT`` for the root.
      depth: number of steps from the root (root: 0).
      visits: N(s), backups that passed through the node.
      value_sum: W(s), sum of backed-up values; Q(s) = W(s) / N(s).
      virtual_loss: simulations in flight through the node (tree-parallel MCTS).
      logprob: the step's log-probability under the generator (0 for the root).
      prior: P(s), softmax of ``logprob`` over the siblings created in the same expansion.
      prm_score: the verifier's score of the step in [0, 1], NaN until scored.
      status: ``OPEN``, ``TERMINAL`` or ``PRUNED``.
      created_step: value of ``commits`` when the node was created (replay order).
      replica: id of the generator replica that made the node, -1 if unknown.
      step_text, token_ids: the step itself (root: the prompt text and prompt token ids).
      answer: the final answer read from a terminal node's chain, or None.
      children: child ids per node, in creation order.
      commits: number of expansions committed so far (a logical clock).
    """

    def __init__(self, prompt: str, prompt_token_ids: Sequence[int] = (), problem_id: str = ""):
        self.problem_id = problem_id
        for name, code in _SCALAR_FIELDS:
            setattr(self, name, array(code))
        self.step_text: list[str] = []
        self.token_ids: list[tuple[int, ...]] = []
        self.answer: list[str | None] = []
        self.children: list[list[int]] = []
        self.commits = 0
        self._append(NO_PARENT, Step(prompt, tuple(prompt_token_ids)), prior=1.0)

    # ------------------------------------------------------------------ growth
    def __len__(self) -> int:
        return len(self.parent)

    def _append(self, parent: int, step: Step, prior: float, replica: int = -1) -> int:
        node = len(self.parent)
        self.parent.append(parent)
        self.depth.append(0 if parent == NO_PARENT else self.depth[parent] + 1)
        self.visits.append(0)
        self.value_sum.append(0.0)
        self.virtual_loss.append(0)
        self.logprob.append(step.logprob)
        self.prior.append(prior)
        self.prm_score.append(math.nan)
        self.status.append(TERMINAL if step.terminal else OPEN)
        self.created_step.append(self.commits)
        self.replica.append(replica)
        self.step_text.append(step.text)
        self.token_ids.append(tuple(step.token_ids))
        self.answer.append(None)
        self.children.append([])
        if parent != NO_PARENT:
            self.children[parent].append(node)
        return node

    def add_children(self, parent: int, steps: Sequence[Step], replica: int = -1) -> list[int]:
        """Appends one expansion of ``parent``; returns the new node ids (in ``steps`` order).

        Priors are the softmax of the steps' log-probabilities within this expansion, so that
        PUCT sees a distribution over the sampled alternatives (Silver et al., 2017).
        """
        if not 0 <= parent < len(self):
            raise IndexError(f"no node {parent} in a tree of {len(self)} nodes")
        if self.status[parent] == TERMINAL:
            raise ValueError(f"node {parent} is terminal and cannot be expanded")
        k = len(steps)
        first = len(self.parent)
        # one extend per field (this is the engine's hot path: a node is 15 field writes)
        self.parent.extend([parent] * k)
        self.depth.extend([self.depth[parent] + 1] * k)
        self.visits.extend([0] * k)
        self.value_sum.extend([0.0] * k)
        self.virtual_loss.extend([0] * k)
        self.logprob.extend([s.logprob for s in steps])
        self.prior.extend(softmax([s.logprob for s in steps]))
        self.prm_score.extend([math.nan] * k)
        self.status.extend([TERMINAL if s.terminal else OPEN for s in steps])
        self.created_step.extend([self.commits] * k)
        self.replica.extend([replica] * k)
        self.step_text.extend([s.text for s in steps])
        self.token_ids.extend([tuple(s.token_ids) for s in steps])
        self.answer.extend([None] * k)
        self.children.extend([] for _ in range(k))
        ids = list(range(first, first + k))
        self.children[parent].extend(ids)
        self.commits += 1
        return ids

    # ------------------------------------------------------------------ reading
    def path(self, node: int) -> list[int]:
        """Node ids from the root to ``node`` inclusive."""
        out = []
        while node != NO_PARENT:
            out.append(node)
            node = self.parent[node]
        out.reverse()
        return out

    def steps(self, node: int) -> list[str]:
        """Step texts from the first step to ``node`` (the prompt excluded)."""
        return [self.step_text[n] for n in self.path(node)[1:]]

    def prefix_token_ids(self, node: int, delimiter_ids: Sequence[int] = ()) -> list[int]:
        """Prompt token ids followed by every step's ids, each step followed by the delimiter."""
        out: list[int] = []
        for i, n in enumerate(self.path(node)):
            out.extend(self.token_ids[n])
            if i > 0:
                out.extend(delimiter_ids)
        return out

    def q_value(self, node: int) -> float:
        """Q(s) = W / (N + VL); virtual losses count as visits of value 0. 0 when unvisited."""
        n = self.visits[node] + self.virtual_loss[node]
        return self.value_sum[node] / n if n else 0.0

    def live_children(self, node: int) -> list[int]:
        """Children that are not pruned."""
        return [c for c in self.children[node] if self.status[c] != PRUNED]

    def terminals(self) -> list[int]:
        """Terminal, unpruned nodes in id order."""
        return [n for n in range(len(self)) if self.status[n] == TERMINAL]

    # ------------------------------------------------------------------ MCTS ops
    def apply_virtual_loss(self, path: Iterable[int], amount: int = 1) -> None:
        for n in path:
            self.virtual_loss[n] += amount

    def backup(self, node: int, value: float, virtual_loss: int = 0) -> None:
        """Adds ``value`` to W and 1 to N on the path root..node; removes ``virtual_loss``."""
        if not math.isfinite(value):
            raise ValueError(f"backup value must be finite, got {value}")
        while node != NO_PARENT:
            self.visits[node] += 1
            self.value_sum[node] += value
            self.virtual_loss[node] -= virtual_loss
            node = self.parent[node]

    def backup_expansion(
        self, leaf: int, children: Sequence[int], values: Sequence[float], virtual_loss: int = 1
    ) -> None:
        """Backs up one expansion of ``leaf`` at once: each child gets one visit of its value,
        the path root..leaf gets ``len(children)`` visits and their values' sum, and loses
        ``virtual_loss`` (the same as one :meth:`backup` per child, in one walk up)."""
        total = 0.0
        for child, value in zip(children, values, strict=True):
            if not math.isfinite(value):
                raise ValueError(f"backup value must be finite, got {value}")
            self.visits[child] += 1
            self.value_sum[child] += value
            total += value
        k, node = len(children), leaf
        while node != NO_PARENT:
            self.visits[node] += k
            self.value_sum[node] += total
            self.virtual_loss[node] -= virtual_loss
            node = self.parent[node]

    def prune(self, node: int) -> None:
        if self.status[node] == OPEN:
            self.status[node] = PRUNED

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form: scalar arrays as lists, side tables as lists."""
        d: dict[str, Any] = {"problem_id": self.problem_id, "commits": self.commits}
        for name, _ in _SCALAR_FIELDS:
            d[name] = getattr(self, name).tolist()
        d["step_text"] = list(self.step_text)
        d["token_ids"] = [list(t) for t in self.token_ids]
        d["answer"] = list(self.answer)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tree:
        tree = cls.__new__(cls)
        tree.problem_id = d["problem_id"]
        tree.commits = d["commits"]
        for name, code in _SCALAR_FIELDS:
            setattr(tree, name, array(code, d[name]))
        tree.step_text = list(d["step_text"])
        tree.token_ids = [tuple(t) for t in d["token_ids"]]
        tree.answer = list(d["answer"])
        tree.children = [[] for _ in range(len(tree.parent))]
        for node, parent in enumerate(tree.parent):
            if parent != NO_PARENT:
                tree.children[parent].append(node)
        return tree

    def to_msgpack(self) -> bytes:
        """Lossless binary form: each scalar array as raw little-endian bytes."""
        payload: dict[str, Any] = {
            "version": MSGPACK_VERSION,
            "problem_id": self.problem_id,
            "commits": self.commits,
            "arrays": {name: _le_bytes(getattr(self, name)) for name, _ in _SCALAR_FIELDS},
            "step_text": self.step_text,
            "token_ids": [list(t) for t in self.token_ids],
            "answer": self.answer,
        }
        return msgpack.packb(payload, use_bin_type=True)

    @classmethod
    def from_msgpack(cls, data: bytes) -> Tree:
        """The inverse of :meth:`to_msgpack`. Bytes from anywhere are safe to give it: no
        declared length may exceed the data's own size (so nothing is allocated beyond it), and
        the tree's shape is checked; a bad file raises :class:`TreeFormatError`."""
        return cls.from_dict(_decode_msgpack(data))

    def to_json(self) -> str:
        """Versioned JSON form. NaN scores are written as null."""
        d = self.to_dict()
        d["prm_score"] = [None if math.isnan(x) else x for x in d["prm_score"]]
        return json.dumps({"version": JSON_VERSION, "tree": d}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Tree:
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("version") != JSON_VERSION:
            raise TreeFormatError(
                f"unsupported tree JSON version {obj.get('version') if isinstance(obj, dict) else None}"
            )
        d = obj["tree"]
        d["prm_score"] = [math.nan if x is None else x for x in d["prm_score"]]
        return cls.from_dict(d)


_BIG_ENDIAN = array("i", [1]).tobytes()[0] == 0


def _decode_msgpack(data: bytes) -> dict[str, Any]:
    """:meth:`Tree.to_msgpack` bytes as :meth:`Tree.from_dict` input, checked (see
    :meth:`Tree.from_msgpack`)."""
    n = len(data)
    try:
        payload = msgpack.unpackb(
            data, raw=False, strict_map_key=False, max_str_len=n, max_bin_len=n,
            max_array_len=n, max_map_len=n, max_ext_len=0,
        )  # fmt: skip
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.ExtraData, msgpack.UnpackException) as e:
        raise TreeFormatError(f"not msgpack ({type(e).__name__}: {str(e)[:100]})") from e
    if not isinstance(payload, dict) or payload.get("version") != MSGPACK_VERSION:
        version = payload.get("version") if isinstance(payload, dict) else None
        raise TreeFormatError(f"unsupported tree msgpack version {version!r}")
    arrays = payload.get("arrays")
    if not isinstance(arrays, dict):
        raise TreeFormatError("no scalar arrays")
    d = {k: v for k, v in payload.items() if k not in ("version", "arrays")}
    for name, code in _SCALAR_FIELDS:
        raw = arrays.get(name)
        a = array(code)
        if not isinstance(raw, bytes) or len(raw) % a.itemsize:
            raise TreeFormatError(f"array {name!r} is not {a.itemsize}-byte items")
        a.frombytes(raw)
        if _BIG_ENDIAN:
            a.byteswap()
        d[name] = a
    _check_shape(d)
    return d


class TreeFormatError(ValueError):
    """Bytes that are not a tree this version wrote (a truncated, foreign or crafted file)."""


def _check_shape(d: dict[str, Any]) -> None:
    """A decoded tree is a tree: every array as long as the rest, parents before children."""
    n = len(d["parent"])
    if not n:
        raise TreeFormatError("no root")
    for name, _ in _SCALAR_FIELDS:
        if len(d[name]) != n:
            raise TreeFormatError(f"array {name!r} has {len(d[name])} nodes, parent has {n}")
    for name, kind in (("step_text", str), ("token_ids", list), ("answer", (str, type(None)))):
        items = d.get(name)
        if not isinstance(items, list) or len(items) != n or not all(isinstance(x, kind) for x in items):
            raise TreeFormatError(f"{name!r} must be a list of {n} items of the right type")
    if not all(isinstance(t, int) and not isinstance(t, bool) for ids in d["token_ids"] for t in ids):
        raise TreeFormatError("token ids must be integers")
    if not isinstance(d.get("problem_id"), str) or not isinstance(d.get("commits"), int):
        raise TreeFormatError("problem_id must be a string and commits an integer")
    parent, depth, status = d["parent"], d["depth"], d["status"]
    if parent[0] != NO_PARENT or depth[0] != 0:
        raise TreeFormatError("node 0 must be the root")
    for i in range(1, n):
        if not 0 <= parent[i] < i:
            raise TreeFormatError(f"node {i}: parent {parent[i]} is not an earlier node")
        if depth[i] != depth[parent[i]] + 1:
            raise TreeFormatError(f"node {i}: depth {depth[i]} under a parent of depth {depth[parent[i]]}")
    if any(s not in (OPEN, TERMINAL, PRUNED) for s in status):
        raise TreeFormatError("a node status is not open, terminal or pruned")
    if min(d["visits"]) < 0 or min(d["virtual_loss"]) < 0:
        raise TreeFormatError("visit and virtual-loss counts must be >= 0")
    if not all(math.isfinite(x) for x in d["value_sum"]) or not all(0.0 <= x <= 1.0 for x in d["prior"]):
        raise TreeFormatError("values must be finite and priors in [0, 1]")


def _le_bytes(a: array) -> bytes:
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def softmax(logits: Sequence[float]) -> list[float]:
    """Numerically stable softmax; an empty input gives an empty output."""
    if not logits:
        return []
    m = max(logits)
    if not math.isfinite(m):
        return [1.0 / len(logits)] * len(logits)
    exps = [math.exp(x - m) for x in logits]
    z = sum(exps)
    return [e / z for e in exps]


def trees_equal(a: Tree, b: Tree) -> bool:
    """Field-by-field equality, NaN == NaN (for round-trip tests and determinism checks)."""
    da, db = a.to_dict(), b.to_dict()
    if da.keys() != db.keys():
        return False
    for k in da:
        x, y = da[k], db[k]
        if k == "prm_score":
            if len(x) != len(y) or any(
                not (u == v or (math.isnan(u) and math.isnan(v))) for u, v in zip(x, y, strict=True)
            ):
                return False
        elif x != y:
            return False
    return True
