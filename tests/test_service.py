"""The service's acceptance suite, run twice: against the app in this process (``app``) and
against a real ``treesearch serve`` on 127.0.0.1 (``serve``: local Ray, Ray Serve, warm
pools), both called with the official ``openai`` client, curl and plain HTTP (see
``tests/serving.py``). Then what only ``serve`` has: its ready line, a replica SIGKILLed under
a 100-request load, a SIGTERM drain, and the embedded vLLM models."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from .serving import (
    KEY,
    PUZZLE,
    ROOT,
    UNSOLVABLE,
    Server,
    curl,
    malformed_bodies,
    server_of,
)

KINDS = ["app", pytest.param("serve", marks=pytest.mark.ray)]
LIMITS = {"max_in_flight": 1, "max_queued": 0, "retry_after_s": 3}  # the second search is refused


@pytest.fixture(scope="module")
def serve_main(tmp_path_factory, uses_ray):
    with server_of("serve", tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture(scope="module")
def serve_limited(tmp_path_factory, uses_ray):
    with server_of("serve", tmp_path_factory.mktemp("limited"), **LIMITS) as s:
        yield s


def _either(request, tmp_path_factory, serve_fixture: str, **options):
    """The module's real ``treesearch serve`` (``serve_fixture``), or an in-process app with
    the same options, as the test's parameter says."""
    if request.param == "serve":
        yield request.getfixturevalue(serve_fixture)
        return
    with server_of("app", tmp_path_factory.mktemp("app"), **options) as s:
        yield s


@pytest.fixture(scope="module", params=KINDS)
def server(request, tmp_path_factory) -> Server:
    yield from _either(request, tmp_path_factory, "serve_main")


@pytest.fixture(scope="module", params=KINDS)
def limited(request, tmp_path_factory) -> Server:
    yield from _either(request, tmp_path_factory, "serve_limited", **LIMITS)


def _post(server: Server, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json=body, timeout=kw.pop("timeout", 60), **kw)  # fmt: skip


# ----------------------------------------------------------------------------- both servers
def test_models_and_a_completion_whose_usage_is_its_ledger(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == [
        "game24-beam",
        "game24-mcts",
        "game24-slow",
        "game24-batch",
    ]
    r = client.chat.completions.create(model="game24-beam", messages=PUZZLE)
    (choice,) = r.choices
    ts = r.model_extra["treesearch"]
    row = server.rows()[ts["tree_id"]]
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
    r = server.client().chat.completions.create(
        model="game24-mcts", messages=PUZZLE, n=3, extra_body={"treesearch": {"return_tree": "summary"}}
    )
    contents = [c.message.content for c in r.choices]
    assert len(contents) == 3 and len(set(contents)) == 3
    ts = r.model_extra["treesearch"]
    doc = server.get(f"/v1/trees/{ts['tree_id']}").json()
    chosen = doc["result"]["answer_node"]
    path = ts["tree"]["chosen_path"]
    assert path[-1] == chosen and "\n".join(doc["nodes"][n]["step"] for n in path[1:]) == contents[0]
    page = server.get(f"/v1/trees/{ts['tree_id']}?format=html")
    assert page.status_code == 200 and "<html" in page.text.lower()
    by_curl = curl("-H", f"Authorization: Bearer {KEY}", f"{server.url}/v1/trees/{ts['tree_id']}")
    assert json.loads(by_curl.stdout)["result"]["answer_node"] == chosen


def test_a_streamed_answer_equals_the_plain_one_and_ends_with_usage_and_done(server):
    client = server.client()
    plain = client.chat.completions.create(model="game24-beam", messages=PUZZLE, seed=7)
    stream = client.chat.completions.create(
        model="game24-beam", messages=PUZZLE, seed=7, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    body = {"model": "game24-beam", "messages": PUZZLE, "seed": 7, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    raw = curl("-N", "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
               "-d", json.dumps(body), f"{server.url}/v1/chat/completions")  # fmt: skip
    lines = [x for x in raw.stdout.splitlines() if x]
    assert lines[-1] == "data: [DONE]" and all(x.startswith(("data: ", ":")) for x in lines)
    usage = json.loads(lines[-2][6:])["usage"]
    assert usage["completion_tokens"] == plain.usage.completion_tokens


def test_errors_have_the_openai_shape_and_the_sdk_maps_them(server):
    client = server.client()
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
        server.client(key="wrong").chat.completions.create(model="game24-beam", messages=PUZZLE)
    no_key = curl("-w", "%{http_code}", f"{server.url}/v1/models")
    assert (
        no_key.stdout.endswith("401") and json.loads(no_key.stdout[:-3])["error"]["code"] == "invalid_api_key"
    )
    missing = server.get("/v1/trees/req-nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "tree_not_found"
    route = server.get("/v1/nothing")
    assert route.status_code == 404 and set(route.json()["error"]) == {"message", "type", "param", "code"}


def test_a_tiny_deadline_is_a_200_with_the_best_so_far(server):
    r = server.client().chat.completions.create(
        model="game24-slow", messages=UNSOLVABLE, extra_body={"treesearch": {"deadline_s": 0.5}}
    )
    ts = r.model_extra["treesearch"]
    assert ts["stopped_reason"] == "deadline" and r.choices[0].finish_reason == "length"
    assert ts["ledger"]["seconds"] < 0.5 + 2.0  # the deadline and a call in flight (0.2 s), not the grace
    assert server.rows()[ts["tree_id"]]["stop_reason"] == "deadline"


def test_a_client_that_goes_away_cancels_its_search_and_books_what_it_spent(server):
    """``curl --max-time 1`` on a search of ~minutes: the search stops, nothing more is sent to
    the pool, the queue drains and the run dir has its row, ``cancelled``, with its ledger."""
    before = set(server.rows())
    search = {"params": {"simulations": 100_000}, "budget": {"generated_tokens": 20_000}}
    body = json.dumps({"model": "game24-slow", "messages": UNSOLVABLE, "treesearch": search})
    headers = ["-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json"]
    gone = curl("--max-time", "1", *headers, "-d", body, f"{server.url}/v1/chat/completions")
    assert gone.returncode == 28  # curl's timeout: it went away mid-search
    deadline, model = time.time() + 15, {}
    while time.time() < deadline:
        model = server.status()["models"]["game24-slow"]
        if model["searches"] == 0 and model["queued_requests"] == 0 and not model["generator_in_flight"]:
            break
        time.sleep(0.1)
    assert model["searches"] == 0 and model["queued_requests"] == 0 and not model["generator_in_flight"], (
        model
    )
    time.sleep(0.6)  # three generator calls' time: none is made for it any more
    assert server.status()["models"]["game24-slow"]["generator_calls"] == model["generator_calls"]
    (row,) = [r for i, r in server.rows().items() if i not in before]
    assert row["stop_reason"] == "cancelled" and row["model"] == "game24-slow"
    assert row["ledger"]["policy_generated_tokens"] > 0 and row["ledger"]["wall_seconds"] < 3


def test_concurrent_requests_are_batched_together_at_the_pool(server):
    puzzles = ["4 6 8 13", "1 2 3 4", "2 3 5 12", "1 5 5 5", "3 3 8 8", "1 1 4 6", "2 2 10 10", "1 3 4 6"]

    async def all_at_once():
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
        asks = (
            aclient.chat.completions.create(model="game24-batch", messages=[{"role": "user", "content": p}])
            for p in puzzles
        )
        return await asyncio.gather(*asks)

    answers = asyncio.run(all_at_once())
    assert len({a.model_extra["treesearch"]["tree_id"] for a in answers}) == 8
    model = server.status()["models"]["game24-batch"]  # only this test asks game24-batch
    assert model["max_searches_per_generator_call"] > 1  # one pool call carried several requests' searches
    assert model["generator_requests"] > model["generator_calls"]


def test_a_full_queue_is_429_with_retry_after(limited):
    client = limited.client()
    ask = {"model": "game24-slow", "messages": UNSOLVABLE, "extra_body": {"treesearch": {"deadline_s": 2}}}
    slow = ThreadPoolExecutor(1).submit(client.chat.completions.create, **ask)
    time.sleep(0.5)
    with pytest.raises(openai.RateLimitError) as limited_error:
        client.chat.completions.create(model="game24-beam", messages=PUZZLE)
    assert limited_error.value.response.headers["retry-after"] == "3"
    assert limited_error.value.body["code"] == "queue_full"
    assert slow.result(timeout=30).model_extra["treesearch"]["stopped_reason"] == "deadline"
    assert limited.status()["rejected"] == 1


def test_the_run_dir_works_with_status_and_view(server, capsys):
    from treesearch.cli import main

    server.client().chat.completions.create(model="game24-beam", messages=PUZZLE)
    out = server.run_dir
    assert main(["status", "--run-dir", str(out)]) == 0 and capsys.readouterr().out.startswith("running:")
    assert main(["view", str(out), "-o", str(out / "v.html")]) == 0 and (out / "v.html").is_file()


def test_a_fuzz_of_malformed_requests_is_all_4xx_in_the_openai_shape(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    good = {"model": "game24-beam", "messages": PUZZLE}
    with httpx.Client(timeout=30) as http:
        assert http.post(f"{server.url}/v1/chat/completions", headers=headers, json=good).status_code == 200
        before = server.rss_mb()
        cases = malformed_bodies(random.Random(0))
        statuses: dict[int, int] = {}
        for name, body in cases:
            r = http.post(f"{server.url}/v1/chat/completions", headers=headers, content=body)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:  # a flipped byte can leave a good request (e.g. in a puzzle digit)
                continue
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:200])
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in err["message"], (
                name
            )
        after = server.rss_mb()
        answer = http.post(f"{server.url}/v1/chat/completions", headers=headers, json=good)
    assert len(cases) >= 500 and statuses.get(200, 0) < 20 and statuses[400] > 400 and statuses[413] >= 2
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] == "stop"
    assert after <= 1.1 * before, (before, after)


# ----------------------------------------------------------------------------- treesearch serve only
def test_serve_says_one_ready_line(serve_main):
    (line,) = serve_main.lines
    assert line.startswith(
        "treesearch serving game24-beam, game24-mcts, game24-slow, game24-batch at http://127.0.0.1:"
    )


def test_a_replica_killed_under_load_loses_no_request(serve_main):
    """100 requests from 16 clients; a generator replica is SIGKILLed while they run: every
    request is answered once, and each answer is its own search in the run dir."""
    client = serve_main.client()
    before = set(serve_main.rows())
    puzzles = ["4 6 8 13", "1 2 3 4", "2 3 5 12", "1 5 5 5", "3 3 8 8", "1 1 4 6", "2 2 10 10", "1 3 4 6",
               "4 4 10 10", "1 2 7 7"]  # fmt: skip

    def ask(i: int) -> str:
        r = client.chat.completions.create(
            model=["game24-mcts", "game24-beam"][i % 2],
            messages=[{"role": "user", "content": puzzles[i % 10]}],
            extra_body={"treesearch": {"seed": i}},
        )
        return r.model_extra["treesearch"]["tree_id"]

    killed = threading.Event()

    def kill_one() -> None:
        time.sleep(1.0)
        pids = serve_main.pids("ReplicaActor")  # this server's, not the limited one's
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.set()

    killer = threading.Thread(target=kill_one)
    killer.start()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(ask, range(100)))
    killer.join()
    assert killed.is_set()
    new = [x for x in serve_main.rows() if x not in before]
    assert len(ids) == len(set(ids)) == 100 and sorted(new) == sorted(ids)  # each answered and written once


def test_the_serve_load_benchmark_runs_against_the_service(serve_main):
    """``benchmarks.serve_load --smoke`` (the batch job, a cold run, then every client count and
    the fairness pair) against this module's server: it prints its table and ratio line."""
    cmd = [sys.executable, "-m", "benchmarks.serve_load", "--smoke", "--url", f"{serve_main.url}/v1",
           "--model", "game24-beam", "--api-key", KEY]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    table = [x.split() for x in lines if x.split() and x.split()[0].isdigit()]
    assert [int(r[0]) for r in table] == [1, 4, 12] and all(float(r[-1].rstrip("%")) > 50 for r in table)
    assert lines[-1].startswith("ratio: searches/s at C=12")


def test_sigterm_drains_and_stops_cleanly(serve_limited):
    """Stopped with a search in flight: it answers, then stops, saying only its own two lines."""
    proc = serve_limited.proc
    answer = ThreadPoolExecutor(1).submit(
        serve_limited.client().chat.completions.create, model="game24-slow", messages=PUZZLE
    )
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert answer.result(timeout=60).choices[0].finish_reason in ("stop", "length")  # drained, not dropped
    assert proc.wait(timeout=60) == 0
    said = proc.stdout.read().splitlines()
    assert said == ["stopping: draining searches in flight (at most 5 s)", "stopped"], said
    assert proc.stderr.read().strip() == ""  # only our lines, on stdout


def test_the_killed_replica_was_one_line_of_ours(serve_main):
    """After the load test's SIGKILL: one line for the replica's death (and its return), not
    Ray's paragraph; nothing on stderr."""
    proc = serve_main.proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    said = proc.stdout.read().splitlines()
    assert said[-2:] == ["stopping: draining searches in flight (at most 5 s)", "stopped"]
    died = re.compile(
        r"(generator|PRM) replica \d+ (down|not answering); Ray restarts it \(restart 1( of \d+)?\)$"
    )
    back = re.compile(
        r"(generator|PRM) replica \d+ (back after \d+ s|died and Ray restarted it \(restart 1\))$"
    )
    assert said[:-2] and all(died.match(x) or back.match(x) for x in said[:-2]), said
    assert proc.stderr.read().strip() == ""
