"""The replica pool without Ray: stable homes with bounded loads, spills, per-call delivery,
re-issues after losses and hangs, and the end of a pool whose replicas are all gone."""

import asyncio
import math
import random
import time

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from actors.dispatch import DispatchError, Router, rendezvous_order
from actors.replica import ServiceTime
from treesearch.batcher import replies
from treesearch.protocol import BackendUnavailable


def echo_pool(n: int, delays: dict | None = None, **kw) -> Router:
    async def invoke(handle, batch):
        await asyncio.sleep((delays or {}).get(handle, 0.0))
        return [(handle, x) for x in batch], 0

    return Router(list(range(n)), invoke, key=lambda req: req[0], **kw)


def test_rendezvous_ranking_is_the_same_in_every_process_and_spreads_keys():
    assert rendezvous_order("1-2-3-4", 8) == rendezvous_order("1-2-3-4", 8)  # crc32: no hash seed
    firsts = [rendezvous_order(f"p{i}", 8)[0] for i in range(4000)]
    assert min(firsts.count(r) for r in range(8)) > 400  # ~500 each


def test_homes_are_sticky_balanced_and_identical_across_pools():
    keys = [f"p{i}" for i in range(1000)]
    a, b = echo_pool(8, affinity_bound=10**6), echo_pool(8, affinity_bound=10**6)
    homes_a = a.route(keys)
    assert homes_a == b.route(keys)  # another worker sends each tree to the same replica
    assert max(a.homes.keys_on) <= math.ceil(1.1 * 1000 / 8) and sum(a.homes.keys_on) == 1000
    assert a.route(keys[::-1]) == homes_a[::-1]  # later requests keep their homes
    assert sum(h != rendezvous_order(k, 8)[0] for k, h in zip(keys, homes_a, strict=True)) < 250


def test_a_wave_over_the_bound_spills_to_the_next_replicas_of_its_keys():
    pool = echo_pool(2, affinity_bound=16)
    keys = ["a", "b", "c"]
    home = {k: r for k, r in zip(keys, pool.route(keys), strict=True)}
    wave = [k for k in keys if home[k] == home["a"]] * 20  # one replica's problems, all at once
    routes = pool.route(wave)
    kept = routes.count(home["a"])
    assert kept - (len(wave) - kept) <= 16 and kept >= len(wave) - kept  # within the bound
    assert routes[: kept - 1] == [home["a"]] * (kept - 1)  # the earlier requests keep affinity
    assert pool.homes.home["a"][0] == home["a"]  # the key keeps its home


def test_answers_arrive_per_call_so_a_straggler_holds_only_its_own():
    pool = echo_pool(2, delays={0: 0.5, 1: 0.0}, affinity_bound=10**6)

    async def main():
        reqs = [(f"k{i}", i) for i in range(20)]
        halves = [replies(10), replies(10)]  # two searches' submissions
        pool.dispatch(reqs, halves[0][0] + halves[1][0])
        await asyncio.sleep(0.1)
        early = [f.done() for _, f in halves]
        await asyncio.gather(*(f for _, f in halves))
        return pool.route([k for k, _ in reqs]), early

    homes, early = asyncio.run(main())
    # a search whose requests all went to the fast replica is answered before the slow one is
    assert early == [set(homes[:10]) == {1}, set(homes[10:]) == {1}] and not all(early)


def test_lost_calls_are_reissued_elsewhere_and_a_hung_replica_is_restarted():
    calls, restarted = [], []

    async def invoke(handle, batch):
        calls.append(handle)
        if handle == 0 and calls.count(0) == 1:
            raise ActorUnavailableError("restarting", None)
        if handle == 1 and calls.count(1) == 1:
            await asyncio.sleep(10)  # hangs
        return [(handle, x) for x in batch], 0

    pool = Router([0, 1], invoke, key=lambda r: r, retry_delay_s=0.01, request_timeout_s=0.2,
                       restart=restarted.append, affinity_bound=10**6)  # fmt: skip
    out = asyncio.run(pool.submit([f"k{i}" for i in range(8)]))
    assert len(out) == 8 and sorted(x for _, x in out) == sorted(f"k{i}" for i in range(8))
    assert restarted == [1] and pool.stats.timeouts == 1 and pool.stats.reissued == 8


def test_a_pool_with_every_replica_gone_stops_the_job_and_one_request_fails_alone():
    async def dead(handle, batch):  # what Ray answers at once for an actor it will not restart
        raise ActorDiedError()

    pool = Router([0, 1], dead, key=lambda r: r, retry_delay_s=0.001, gone_after=2, max_retries=20)
    with pytest.raises(BackendUnavailable, match="all 2 replicas"):
        asyncio.run(pool.submit(["a", "b"]))
    flaky = Router([0, 1], dead, key=lambda r: r, retry_delay_s=0.001, gone_after=100, max_retries=2)
    with pytest.raises(DispatchError, match="lost 3 times"):
        asyncio.run(flaky.submit(["a"]))


def test_requests_wait_for_replicas_that_are_restarting_without_spending_their_retries():
    """Both replicas restarting (Ray answers ActorUnavailableError for a while, as while a vLLM
    engine comes back): the requests are served once one is back, though that took more
    attempts than max_retries; a restart longer than restart_wait_s fails the request."""
    t0 = {}

    async def restarting(handle, batch):
        t0.setdefault("t", time.perf_counter())
        if time.perf_counter() - t0["t"] < 0.3:
            raise ActorUnavailableError("restarting", None)
        return [(handle, x) for x in batch], 0

    pool = Router([0, 1], restarting, key=lambda r: r, retry_delay_s=0.01, gone_after=2, max_retries=1)
    out = asyncio.run(pool.submit(["a", "b", "c"]))
    assert sorted(x for _, x in out) == ["a", "b", "c"] and not any(pool.gone)
    assert pool.stats.reissued >= 3 * 2  # more losses than max_retries allows, none charged

    async def never_back(handle, batch):
        raise ActorUnavailableError("restarting", None)

    slow = Router([0, 1], never_back, key=lambda r: r, retry_delay_s=0.01, restart_wait_s=0.2)
    with pytest.raises(DispatchError, match="restarting for more than 0 s"):
        asyncio.run(slow.submit(["a"]))
    assert not any(slow.gone)  # restarting is not gone


def scripted_pool(service: list[float], depth: int = 8, **kw) -> Router:
    """Four replicas that answer at once, each reporting ``depth`` requests queued from other
    callers and its speed from ``service[r]`` (seconds per request; its latency: 20 x that):
    the scripted clock."""

    async def invoke(handle, batch):
        return [(handle, x) for x in batch], depth, (service[handle], 20 * service[handle])

    return Router(list(range(4)), invoke, key=lambda req: req, **kw)


def test_service_time_is_busy_seconds_per_request_and_a_latency_floor():
    clock = ServiceTime(alpha=0.5, rise=1.05)
    assert clock.answered(0.0, 0, 0.0) is None  # nothing answered yet
    assert clock.answered(1.0, 10, 0.3) == (pytest.approx(0.1), 0.3)
    # one engine step answers two calls: the first brings its 0.6 s, the second none
    clock.answered(1.6, 2, 0.2)
    # seconds 1.0 -> 0.8 -> 0.4, requests 10 -> 6 -> 5 (EWMAs at alpha 0.5): 0.08 s a request
    per, latency = clock.answered(1.6, 4, 0.25)
    assert per == pytest.approx(0.4 / 5) and latency == pytest.approx(0.21)  # 0.2, risen 5%
    slow = ServiceTime()
    for i in range(1, 80):
        slow.answered(i * 1.0, 1, 2.0)  # 1 s a request and 2 s a call from now on
    assert slow.report() == (pytest.approx(1.0), 2.0)


def test_a_replica_made_10x_slower_mid_job_sheds_its_homes_gradually():
    service = [0.01] * 4
    pool = scripted_pool(service, rehome_after=4)
    keys = [f"p{i}" for i in range(40)]

    def wave():  # every tree asks once; the replicas answer at once and report their figures
        asyncio.run(pool.submit(keys))

    wave()
    homes = {k: pool.homes.home[k][0] for k in keys}
    on_slow = [k for k in keys if homes[k] == 3]
    assert on_slow and pool.stats.affinity_moves == 0  # even speeds, even queues: all at home
    service[3] = 0.1  # replica 3 slows down 10x; it says so with its next answer
    wave()  # the next wave learns it
    for n in range(1, 4):
        wave()
        assert pool.stats.rehomed == 0 and pool.homes.keys_on[3] == len(on_slow)  # not yet: n < 4
        assert all(pool.homes.away[k] == n for k in on_slow)
    wave()  # the fourth routing in a row away from home: homed where they went
    assert pool.stats.rehomed == len(on_slow) and pool.homes.keys_on[3] == 0
    assert all(pool.homes.home[k][0] != 3 for k in on_slow)
    assert all(pool.homes.home[k][0] == homes[k] for k in keys if k not in on_slow)  # the rest stay
    hits = pool.stats.affinity_hits
    wave()
    assert pool.stats.affinity_hits == hits + len(keys)  # every tree served at (its new) home
    assert sum(pool.homes.keys_on) == len(keys)


def test_routing_by_queue_length_keeps_a_slow_replicas_homes():
    service = [0.01, 0.01, 0.01, 0.1]
    pool = scripted_pool(service, by_wait=False)
    keys = [f"p{i}" for i in range(40)]
    for _ in range(6):
        asyncio.run(pool.submit(keys))
    assert pool.stats.rehomed == 0 and pool.stats.affinity_moves == 0 and pool.homes.keys_on[3] > 0


def test_a_homogeneous_pool_keeps_its_homes_stable():
    """Service times that differ by measurement noise (+-5%) and queues within the bound:
    no request leaves its home, no key is homed again."""
    rng = random.Random(0)
    service = [0.01] * 4
    depths = [0] * 4

    async def invoke(handle, batch):
        return [(handle, x) for x in batch], depths[handle], (service[handle], 20 * service[handle])

    pool = Router(list(range(4)), invoke, key=lambda req: req, affinity_bound=16)
    keys = [f"p{i}" for i in range(64)]
    homes = pool.route(keys)
    for _ in range(50):
        for r in range(4):
            service[r] = 0.01 * rng.uniform(0.95, 1.05)
            depths[r] = rng.randrange(0, 10)
        asyncio.run(pool.submit(rng.sample(keys, 32)))
    assert pool.stats.rehomed == 0 and pool.stats.affinity_moves == 0
    assert pool.route(keys) == homes
