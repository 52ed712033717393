"""Reading files a crash, a disk or a person may have mangled: run dirs and trees.

Every reader bounds what it reads (file sizes, and inside a file every declared length, nesting
depth and count) and checks the shape of what it got, so a crafted or truncated file ends in one
:class:`treesearch.config.ConfigError` naming the file (and line) and what is wrong, never in a
traceback or an allocation the file's size does not justify.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from treesearch.errors import ConfigError

MAX_JSON_BYTES = 64 << 20  # summary.json, run.json, config.yaml
MAX_ROW_BYTES = 1 << 20  # one results.jsonl line
MAX_TREE_BYTES = 1 << 30  # one trees/<id>.msgpack
MAX_ID_CHARS = 512
STATUSES = ("ok", "failed")


def _read(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ConfigError(f"{path}: {size:,} bytes, over the {limit:,} a file of this kind may have")
        with path.open("rb") as f:
            data = f.read(size + 1)  # read(n) allocates n bytes at once: ask for what is there
        if len(data) > limit:  # grew meanwhile
            raise ConfigError(f"{path}: over the {limit:,} bytes a file of this kind may have")
        return data
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e


def _json(text: bytes | str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON or bad UTF-8; nesting too deep
        raise ConfigError(f"{where}: not valid JSON ({type(e).__name__}: {str(e)[:120]})") from e


def read_json(path: Path, kind: type = dict) -> Any:
    """A JSON file of at most :data:`MAX_JSON_BYTES` whose top level is a ``kind``."""
    value = _json(_read(path, MAX_JSON_BYTES), str(path))
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: expected a JSON {kind.__name__} at the top level")
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping of at most :data:`MAX_JSON_BYTES` (safe loader only)."""
    try:
        value = yaml.safe_load(_read(path, MAX_JSON_BYTES))
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise ConfigError(
            f"{path}: not valid YAML ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from e
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return value


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_row(row: Any, where: str) -> dict[str, Any]:
    """A ``results.jsonl`` row of the right shape, or a ConfigError saying what is off."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: a results row must be a JSON object")
    pid = row.get("id")
    if not isinstance(pid, str) or not 0 < len(pid) <= MAX_ID_CHARS or "/" in pid or pid in (".", ".."):
        raise ConfigError(f"{where}: a results row needs an id (a string, no '/', <= {MAX_ID_CHARS} chars)")
    if row.get("status", "ok") not in STATUSES:
        raise ConfigError(f"{where}: status must be one of {list(STATUSES)}")
    for key in ("correct", "covered"):
        if not isinstance(row.get(key), bool):
            raise ConfigError(f"{where}: {key} must be true or false")
    if not isinstance(row.get("nodes"), int) or isinstance(row.get("nodes"), bool) or row["nodes"] < 0:
        raise ConfigError(f"{where}: nodes must be a count")
    ledger = row.get("ledger")
    if not isinstance(ledger, dict) or not all(isinstance(k, str) and _number(v) for k, v in ledger.items()):
        raise ConfigError(f"{where}: ledger must map names to finite numbers")
    if row.get("answer") is not None and not isinstance(row["answer"], str):
        raise ConfigError(f"{where}: answer must be a string or null")
    return row


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of every line of a ``results.jsonl``, streamed (no file-sized
    buffer), each checked; a line over :data:`MAX_ROW_BYTES` is an error. A torn last line (a
    kill mid-write: no newline) is skipped."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    with f:
        for i, line in enumerate(iter(lambda: f.readline(MAX_ROW_BYTES + 1), b""), 1):
            if not line.endswith(b"\n"):
                if len(line) > MAX_ROW_BYTES:
                    raise ConfigError(f"{path}:{i}: a line over {MAX_ROW_BYTES:,} bytes")
                return  # the torn last line of a kill mid-write
            if line.strip():
                yield i, check_row(_json(line, f"{path}:{i}"), f"{path}:{i}")


def read_tree_file(path: Path) -> Any:
    """A tree from ``trees/<id>.msgpack`` (size-checked; see :meth:`treesearch.tree.Tree.from_msgpack`)."""
    from treesearch.tree import Tree, TreeFormatError

    data = _read(path, MAX_TREE_BYTES)
    try:
        return Tree.from_msgpack(data)
    except TreeFormatError as e:
        raise ConfigError(f"{path}: not a treesearch tree ({e})") from e
