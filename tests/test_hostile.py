"""Hostile files: over a thousand crafted trees, results files and run dirs given to ``export``,
``view`` and ``run --resume``. Each ends in success or in one ``error:`` line with exit status
2; never a traceback, never memory the file's size does not justify."""

from __future__ import annotations

import json
import random
import shutil
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from treesearch.cli import main

from .test_cli import CONFIGS

BASE = ["run", str(CONFIGS / "game24-mcts.yaml"), "--in-process", "--quiet", "--limit", "3"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    assert main([*BASE, "--out", str(out), "--set", "algorithm.simulations=8"]) == 0
    return out


def _expect_clean(capsys, rc: int, what: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc in (0, 2), (what, rc, err[-3:])
    assert "Traceback" not in "\n".join(err), (what, err[-5:])
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("error: "), (what, err)


# ----------------------------------------------------------------------------- crafted trees
def crafted_trees(valid: bytes, rng: random.Random, n: int) -> list[bytes]:
    payload = msgpack.unpackb(valid, raw=False)
    out = []
    huge = [
        b"\xdb\xff\xff\xff\xff" + b"x" * 10,  # a str of 4 GiB declared, 10 bytes there
        b"\xc6\xff\xff\xff\xff" + b"\x00" * 10,  # a bin of 4 GiB
        b"\xdd\xff\xff\xff\xff" + b"\xc0" * 10,  # an array of 4G items
        b"\xdf\xff\xff\xff\xff" + b"\xc0" * 10,  # a map of 4G entries
        b"\x91" * 100_000 + b"\xc0",  # 100,000 nested arrays
        msgpack.packb({"version": 1, "arrays": {"parent": b"\x00" * 7}}),
        msgpack.packb([1, 2, 3]),
        b"",
        b"\xc1",  # never used
    ]
    out += huge
    fields = list(payload)
    while len(out) < n:
        kind = rng.randrange(6)
        if kind == 0:  # truncated
            out.append(valid[: rng.randrange(len(valid))])
        elif kind == 1:  # flipped bytes
            b = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append(bytes(b))
        elif kind == 2:  # random bytes
            out.append(rng.randbytes(rng.randint(1, 400)))
        elif kind == 3:  # a field of the wrong type
            p = dict(payload)
            p[rng.choice(fields)] = rng.choice([None, 7, "x", [1, "a"], {"a": 1}, b"\x01\x02", -1.5])
            out.append(msgpack.packb(p, use_bin_type=True))
        elif kind == 4:  # an array of the wrong length or items
            p = json.loads(json.dumps(payload, default=lambda b: None))  # a deep copy, bins dropped
            p["arrays"] = dict(payload["arrays"])
            name = rng.choice(list(p["arrays"]))
            p["arrays"][name] = p["arrays"][name][: rng.randrange(max(1, len(p["arrays"][name])))] + b"\x01"
            out.append(msgpack.packb({**payload, "arrays": p["arrays"]}, use_bin_type=True))
        else:  # parents that point forward, or depths that lie
            arrays = dict(payload["arrays"])
            parent = bytearray(arrays["parent"])
            i = 4 * rng.randrange(1, len(parent) // 4)
            parent[i : i + 4] = rng.choice([10**6, len(parent) // 4, 2**31 - 1]).to_bytes(4, "little")
            arrays["parent"] = bytes(parent)
            out.append(msgpack.packb({**payload, "arrays": arrays}, use_bin_type=True))
    return out


def test_a_thousand_crafted_trees_fail_clearly_within_bounded_memory(tmp_path, capsys, base_run):
    valid = next((base_run / "trees").iterdir()).read_bytes()
    files = crafted_trees(valid, random.Random(0), 700)
    out = tmp_path / "out.json"
    errors = 0
    for i, data in enumerate(files):
        f = tmp_path / f"t{i}.msgpack"
        f.write_bytes(data)
        tracemalloc.start()
        rc = main(["export", str(f), "--format", "json", "-o", str(out)])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        _expect_clean(capsys, rc, f"tree {i}")
        assert peak < 32 << 20, (i, peak)  # a 4 GiB declared length allocates nothing
        errors += rc == 2
        f.unlink()
    assert errors >= 650  # nearly every mutation is caught, none crashes


# ----------------------------------------------------------------------------- crafted run dirs
BAD_LINES = [
    "[]",
    '"row"',
    "{}",
    '{"id": 5, "correct": true, "covered": true, "nodes": 1, "ledger": {}}',
    '{"id": "../../etc", "correct": true, "covered": true, "nodes": 1, "ledger": {}}',
    '{"id": "a", "correct": "yes", "covered": true, "nodes": 1, "ledger": {}}',
    '{"id": "a", "correct": true, "covered": true, "nodes": -4, "ledger": {}}',
    '{"id": "a", "correct": true, "covered": true, "nodes": 1, "ledger": {"prm_tokens": 1e400}}',
    '{"id": "a", "correct": true, "covered": true, "nodes": 1, "ledger": {"x": [1]}}',
    '{"id": "a", "status": "done", "correct": true, "covered": true, "nodes": 1, "ledger": {}}',
    '{"id": "a", "correct": true, "covered": true, "nodes": 1, "ledger": {}, "answer": 24}',
    "[" * 50_000 + "]" * 50_000,
    '{"id": "a", "correct": tru',
    "\xff\xfe not utf-8",
    "x" * (2 << 20),
]


def crafted_run_dirs(base: Path, root: Path, rng: random.Random, n: int) -> list[Path]:
    lines = (base / "results.jsonl").read_text().splitlines()
    dirs = []
    for i in range(n):
        d = root / f"r{i}"
        shutil.copytree(base, d)
        kind = rng.randrange(4)
        if kind <= 1:  # a bad line among good ones
            mine = list(lines)
            mine.insert(rng.randrange(len(mine) + 1), rng.choice(BAD_LINES))
            (d / "results.jsonl").write_bytes(("\n".join(mine) + "\n").encode("utf-8", "surrogateescape"))
        elif kind == 2:  # run.json or summary.json mangled
            name = rng.choice(["run.json", "summary.json"])
            (d / name).write_bytes(rng.choice([b"", b"[]", b"{", b'{"config_hash": 7, "sessions": 1}',
                                              b"[" * 100_000, rng.randbytes(64)]))  # fmt: skip
        else:  # a tree file mangled
            tree = next((d / "trees").iterdir())
            tree.write_bytes(tree.read_bytes()[: rng.randrange(50)] + rng.randbytes(rng.randrange(20)))
        dirs.append(d)
    return dirs


def test_crafted_run_dirs_fail_clearly_in_view_and_resume(tmp_path, capsys, base_run):
    dirs = crafted_run_dirs(base_run, tmp_path, random.Random(1), 160)
    refused = {"view": 0, "resume": 0}
    for d in dirs:
        rc = main(["view", str(d), "-o", str(tmp_path / "v.html")])
        _expect_clean(capsys, rc, f"view {d.name}")
        refused["view"] += rc == 2
        rc = main([*BASE, "--out", str(d), "--resume", "--set", "algorithm.simulations=8"])
        _expect_clean(capsys, rc, f"resume {d.name}")
        refused["resume"] += rc == 2
    # 160 dirs x 2 commands + 700 trees: over a thousand crafted files; each command refuses
    # the dirs it cannot read (a bad line is dropped by view, a mangled tree by resume)
    assert refused["view"] >= 120 and refused["resume"] >= 80, refused  # 142 and 101 when written


def test_out_naming_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("not a dir")
    assert main([*BASE, "--out", str(f)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {f}: exists and is not a directory"
    assert main(["export", str(f), "--format", "nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --format 'nope'")
    assert main(["view", str(f)]) == 2
    assert "not a run dir" in capsys.readouterr().err
