"""The search service's HTTP API, in this process: the real FastAPI app and search service on
deterministic backends, served by uvicorn on 127.0.0.1, called with the official ``openai``
client and plain HTTP. (``tests/test_serve.py`` runs the same against ``treesearch serve`` on
Ray Serve.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from treesearch.backends.deterministic import NoisyOracleGenerator, RulePRM
from treesearch.config import load_config
from treesearch.http import make_app
from treesearch.job import resolve
from treesearch.service import SearchService, ServiceOptions
from treesearch.tasks.game24 import Game24

from .test_cli import CONFIGS

KEY = "test-key"
PUZZLE = [{"role": "user", "content": "Use 4 6 8 13 to make 24."}]


class CountingGenerator(NoisyOracleGenerator):
    """The noisy oracle, keeping each call's batch size (requests of how many searches)."""

    def __init__(self, latency_s: float = 0.0):
        super().__init__(0.5, 0, latency_s=latency_s)
        self.batches: list[int] = []
        self.searches: list[int] = []

    async def generate(self, requests):
        self.batches.append(len(requests))
        self.searches.append(len({r.problem_id for r in requests}))
        return await super().generate(requests)


@contextlib.contextmanager
def serving(
    tmp_path: Path, latency_s: float = 0.0, **options
) -> Iterator[tuple[str, SearchService, CountingGenerator]]:
    jobs = {
        "game24-beam": resolve(load_config(CONFIGS / "game24-beam.yaml", ["run.in_process=true"])),
        "game24-mcts": resolve(load_config(CONFIGS / "game24-mcts.yaml", ["run.in_process=true"])),
    }
    gen = CountingGenerator(latency_s)
    service = SearchService(
        jobs, lambda job: (gen, RulePRM(Game24(), True)), ServiceOptions(**options), tmp_path / "run"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(make_app(service, KEY), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", service, gen
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("svc")) as s:
        yield s


def _client(url: str, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=60)


def _rows(service: SearchService) -> dict[str, dict]:
    out = {}
    for line in (service.store.out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["id"]] = row
    return out


def test_models_and_a_completion_whose_usage_is_its_ledger(server):
    url, service, _ = server
    client = _client(url)
    assert [m.id for m in client.models.list()] == ["game24-beam", "game24-mcts"]
    r = client.chat.completions.create(model="game24-beam", messages=PUZZLE)
    (choice,) = r.choices
    ts = r.model_extra["treesearch"]
    row = _rows(service)[ts["tree_id"]]
    assert choice.finish_reason == "stop" and choice.message.content.endswith("(left: 24)")
    assert ts["verified"] is True and ts["stopped_reason"] == "verified" and ts["algorithm"] == "beam"
    led = row["ledger"]
    assert (
        r.usage.completion_tokens == led["policy_generated_tokens"] == ts["ledger"]["policy_generated_tokens"]
    )
    assert r.usage.prompt_tokens == led["policy_prompt_tokens"]
    assert r.usage.prompt_tokens_details.cached_tokens == led["policy_cached_prompt_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    returned = len(choice.message.content.encode()) + 1  # byte tokens: the steps, each with its delimiter
    assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.completion_tokens - returned
    assert ts["ledger"]["prm_tokens"] == led["prm_tokens"] > 0


def test_n_distinct_choices_and_the_tree_whose_chosen_leaf_is_the_answer(server):
    url, _, _ = server
    r = _client(url).chat.completions.create(
        model="game24-mcts", messages=PUZZLE, n=3, extra_body={"treesearch": {"return_tree": "summary"}}
    )
    contents = [c.message.content for c in r.choices]
    assert len(contents) == 3 and len(set(contents)) == 3
    ts = r.model_extra["treesearch"]
    doc = httpx.get(f"{url}/v1/trees/{ts['tree_id']}", headers={"Authorization": f"Bearer {KEY}"}).json()
    chosen = doc["result"]["answer_node"]
    path = ts["tree"]["chosen_path"]
    assert path[-1] == chosen and "\n".join(doc["nodes"][n]["step"] for n in path[1:]) == contents[0]
    page = httpx.get(
        f"{url}/v1/trees/{ts['tree_id']}?format=html", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_a_streamed_answer_equals_the_plain_one_and_ends_with_usage_and_done(server):
    url, _, _ = server
    client = _client(url)
    plain = client.chat.completions.create(model="game24-beam", messages=PUZZLE, seed=7)
    stream = client.chat.completions.create(
        model="game24-beam", messages=PUZZLE, seed=7, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "game24-beam", "messages": PUZZLE, "stream": True},
    ) as raw:
        lines = [x for x in raw.iter_lines() if x]
    assert lines[-1] == "data: [DONE]" and all(x.startswith(("data: ", ":")) for x in lines)


def test_errors_have_the_openai_shape_and_the_sdk_maps_them(server):
    url, _, _ = server
    client = _client(url)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="game24-beam",
            messages=PUZZLE,
            extra_body={"treesearch": {"budget": {"generated_tokens": -5}}},
        )
    assert bad.value.body["param"] == "treesearch.budget.generated_tokens"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="game24-beam", messages=PUZZLE, extra_body={"treesearch": {"params": {"width": 0}}}
        )
    assert (
        bad.value.body["param"] == "treesearch.params.width" and "[1, 1000000]" in bad.value.body["message"]
    )
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="game24-beam", messages=[{"role": "user", "content": "hi"}])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-7", messages=PUZZLE)
    with pytest.raises(openai.AuthenticationError):
        _client(url, key="wrong").chat.completions.create(model="game24-beam", messages=PUZZLE)
    missing = httpx.get(f"{url}/v1/trees/req-nope", headers={"Authorization": f"Bearer {KEY}"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "tree_not_found"
    route = httpx.get(f"{url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert route.status_code == 404 and set(route.json()["error"]) == {"message", "type", "param", "code"}


def test_a_full_queue_is_429_with_retry_after(tmp_path):
    with serving(tmp_path, latency_s=0.3, max_in_flight=1, max_queued=0, retry_after_s=3) as (url, _, _):
        client = _client(url)
        slow = threading.Thread(
            target=lambda: client.chat.completions.create(model="game24-mcts", messages=PUZZLE)
        )
        slow.start()
        time.sleep(0.5)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="game24-mcts", messages=PUZZLE)
        assert (
            limited.value.response.headers["retry-after"] == "3"
            and limited.value.body["code"] == "queue_full"
        )
        slow.join()


def test_a_tiny_deadline_is_a_200_with_the_best_so_far(tmp_path):
    with serving(tmp_path, latency_s=0.2) as (url, _, _):
        r = _client(url).chat.completions.create(
            model="game24-mcts", messages=PUZZLE, extra_body={"treesearch": {"deadline_s": 0.3}}
        )
    ts = r.model_extra["treesearch"]
    assert ts["stopped_reason"] == "deadline" and r.choices[0].finish_reason == "length"
    assert ts["ledger"]["seconds"] < 0.3 + 2.0 + 1.0  # the deadline, its grace, a call in flight


def test_a_client_that_goes_away_cancels_its_search(tmp_path):
    with serving(tmp_path, latency_s=1.0) as (url, service, gen):  # a search of several seconds
        with pytest.raises(httpx.TimeoutException):  # 1 1 1 1 has no 24: the search goes on
            httpx.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=1.0,
                json={
                    "model": "game24-mcts",
                    "messages": [{"role": "user", "content": "1 1 1 1"}],
                    "treesearch": {"budget": {"generated_tokens": 100_000}},
                },
            )
        deadline = time.time() + 10
        while time.time() < deadline and (
            service.admission.running or service.profiles["game24-mcts"].engine.trees
        ):
            time.sleep(0.05)
        engine = service.profiles["game24-mcts"].engine
        assert service.admission.running == 0 and len(engine.trees) == 0  # the search and its tree are gone
        assert engine.batcher.waiting == 0 and engine.batcher.active == 0
        calls = len(gen.batches)
        time.sleep(0.6)
        assert len(gen.batches) == calls  # nothing more is sent for it
        assert not (service.store.out / "results.jsonl").exists()  # no answer: none written


def test_concurrent_requests_are_batched_together_at_the_pool(tmp_path):
    with serving(tmp_path, latency_s=0.05) as (url, _, gen):
        puzzles = ["4 6 8 13", "1 2 3 4", "2 3 5 12", "1 5 5 5", "3 3 8 8", "1 1 4 6", "2 2 10 10", "1 3 4 6"]

        async def all_at_once():
            aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            return await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model="game24-mcts", messages=[{"role": "user", "content": p}]
                    )
                    for p in puzzles
                )
            )

        answers = asyncio.run(all_at_once())
    assert len({a.model_extra["treesearch"]["tree_id"] for a in answers}) == 8
    assert max(gen.searches) > 1 and max(gen.batches) > 1  # one pool call carried several requests' searches


def test_the_run_dir_works_with_status_and_view(server, capsys):
    from treesearch.cli import main

    url, service, _ = server
    _client(url).chat.completions.create(model="game24-beam", messages=PUZZLE)
    out = service.store.out
    assert main(["status", "--run-dir", str(out)]) == 0 and capsys.readouterr().out.startswith("running:")
    assert main(["view", str(out), "-o", str(out / "v.html")]) == 0 and (out / "v.html").is_file()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def malformed_bodies(rng) -> list[tuple[str, bytes]]:
    """Over 500 bad requests: what a broken client, a fuzzer or a hostile caller sends."""
    good = {"model": "game24-beam", "messages": PUZZLE}
    raw = [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b"null",
        b"\xff\xfe{}",
        b'{"model": "\xc3\x28"}',
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b"{" + b" " * (2 << 20) + b"}",
        json.dumps({**good, "pad": "x" * (2 << 20)}).encode(),
    ]
    bad_fields = {
        "model": [5, None, [], {"id": 1}],
        "messages": [
            "4 6 8 13",
            [],
            None,
            [{}],
            [{"role": "user"}],
            [{"role": "wizard", "content": "4 6 8 13"}],
            [{"role": "user", "content": 24}],
            [{"role": "system", "content": "x"}],
            [{"role": "user", "content": "4 6 8 13"}] * 10_000,
        ],
        "n": ["3", 0, -1, 1000, 2.5, True],
        "stream": ["yes", 1],
        "temperature": [-1, 5, "hot"],
        "max_completion_tokens": [0, -3, "ten", 1.5],
        "seed": [-1, "s", 2**40],
        "top_p": [0.5],
        "logprobs": [True],
        "frobnicate": [1],
        "stream_options": [{"include_usage": "yes"}, {"x": 1}, 3],
    }
    search = {
        "algorithm": ["astar", 3, None],
        "params": [{"width": 0}, {"widht": 2}, {"width": "w"}, 5],
        "budget": [
            {"generated_tokens": -1},
            {"generated_tokens": 0},
            {"tokens": 5},
            {"seconds": float("inf")},
            {"flops": "many"},
            {"nodes": True},
            [1],
        ],
        "deadline_s": [0, -5, 1e9, "soon"],
        "seed": [-2],
        "return_tree": ["all", 1],
        "extra": [1],
    }
    cases = [(f"raw {i}", r) for i, r in enumerate(raw)]
    for key, values in bad_fields.items():
        for v in values:
            cases.append((f"{key}={str(v)[:30]}", json.dumps({**good, key: v}, allow_nan=True).encode()))
    for key, values in search.items():
        for v in values:
            cases.append(
                (f"treesearch.{key}", json.dumps({**good, "treesearch": {key: v}}, allow_nan=True).encode())
            )
    while len(cases) < 520:  # random mutations of a good body: cut, flipped bytes, wrong-typed fields
        body = json.dumps(
            {**good, "treesearch": {"budget": {"generated_tokens": rng.choice([-7, 0, "x", 1e400])}}}
        )
        kind = rng.randrange(3)
        if kind == 0:
            body = body[: rng.randrange(len(body))]
        elif kind == 1:
            b = bytearray(body.encode())
            b[rng.randrange(len(b))] = rng.randrange(256)
            cases.append(("flipped", bytes(b)))
            continue
        cases.append((f"mutation {kind}", body.encode()))
    return cases


def test_a_fuzz_of_malformed_requests_is_all_4xx_in_the_openai_shape(tmp_path):
    import random

    with serving(tmp_path) as (url, _, _):
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        with httpx.Client(timeout=30) as http:
            assert (
                http.post(
                    f"{url}/v1/chat/completions",
                    headers=headers,
                    json={"model": "game24-beam", "messages": PUZZLE},
                ).status_code
                == 200
            )
            before = _rss_mb()
            cases = malformed_bodies(random.Random(0))
            statuses = {}
            for name, body in cases:
                r = http.post(f"{url}/v1/chat/completions", headers=headers, content=body)
                if r.status_code == 200:  # a flipped byte can leave a good request (e.g. in a puzzle digit)
                    statuses[200] = statuses.get(200, 0) + 1
                    continue
                assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
                err = r.json()["error"]
                assert (
                    set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"]
                ), name
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            after = _rss_mb()
            good = http.post(
                f"{url}/v1/chat/completions",
                headers=headers,
                json={"model": "game24-beam", "messages": PUZZLE},
            )
    assert len(cases) >= 500 and statuses.get(200, 0) < 20 and statuses[400] > 400 and statuses[413] >= 2
    assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] == "stop"
    assert after <= 1.1 * before, (before, after)
