"""Placement of problems on search workers by pace (:class:`treesearch.feed.FinishRates`),
driven the way :class:`actors.fleet.WorkerFleet` drives it (a worker pulls its freed slots, at
most a lease at a time, capped by its share), on a fake clock: no Ray, no sleeping."""

from __future__ import annotations

import heapq

from treesearch.feed import FinishRates


def _fleet(seconds_per_problem: list[float], problems: int, capped: bool, slots: int = 4, lease: int = 4):
    """Every problem's (worker, finish time), and the time the last one finished.

    Each worker searches up to ``slots`` problems at once, each taking its own
    ``seconds_per_problem``; it pulls when it starts and whenever one finishes."""
    now = [0.0]
    pace = FinishRates(len(seconds_per_problem), slots, clock=lambda: now[0])
    queue = list(range(problems))[::-1]
    held = [0] * len(seconds_per_problem)
    done: dict[int, tuple[int, float]] = {}
    events: list[tuple[float, int, int]] = []

    def pull(w: int) -> None:
        wanted = min(slots - held[w], lease)
        n = pace.cap(w, wanted, len(queue)) if capped else wanted
        for _ in range(min(n, len(queue))):
            heapq.heappush(events, (now[0] + seconds_per_problem[w], w, queue.pop()))
            held[w] += 1
        if n:
            pace.handed(w)

    for w in range(len(seconds_per_problem)):
        pull(w)
    while events:
        now[0], w, p = heapq.heappop(events)
        assert p not in done, "a problem finished twice"
        done[p] = (w, now[0])
        held[w] -= 1
        pace.done(w)
        for v in range(len(seconds_per_problem)):  # every idle worker asks again (the fleet's step calls)
            pull(v)
    return done, now[0]


def test_a_worker_10x_slower_gets_fewer_problems_and_none_of_the_last():
    done, end = _fleet([1.0, 10.0], 200, capped=True)
    assert sorted(done) == list(range(200))  # each exactly once
    slow = [p for p, (w, _) in done.items() if w == 1]
    fast_rate, slow_rate = 4 / 1.0, 4 / 10.0
    assert len(slow) <= 200 * slow_rate / (fast_rate + slow_rate) * 1.5  # about its pace's share
    last = sorted(done, key=lambda p: done[p][1])[-20:]
    assert sum(done[p][0] == 1 for p in last) <= 4
    _, uncapped = _fleet([1.0, 10.0], 200, capped=False)
    ideal = 200 / (fast_rate + slow_rate)
    assert end <= uncapped - 4.0  # the tail no longer waits on the slow worker's full pull
    assert end <= ideal * 1.15, (end, ideal)


def test_an_even_fleet_splits_evenly_and_is_not_slowed():
    done, end = _fleet([1.0, 1.0, 1.0], 300, capped=True)
    per = [sum(w == v for w, _ in done.values()) for v in range(3)]
    assert sorted(done) == list(range(300)) and max(per) - min(per) <= 8, per
    _, uncapped = _fleet([1.0, 1.0, 1.0], 300, capped=False)
    assert end <= uncapped + 1.0


def test_the_first_pulls_split_a_short_queue_and_the_fastest_always_gets_one():
    now = [0.0]
    pace = FinishRates(2, 4, clock=lambda: now[0])
    assert pace.cap(0, 64, 3) == 2 and pace.cap(1, 64, 1) == 1  # even shares before any finished
    pace.handed(0), pace.handed(1)
    now[0] = 10.0
    for _ in range(30):
        pace.done(0)
    pace.done(1)
    assert pace.cap(0, 64, 1) == 1  # the fastest is never refused while problems wait
    assert pace.cap(1, 64, 1) == 0  # 30x slower: none of the very last
    assert pace.cap(1, 64, 1, gone=frozenset({0})) == 1  # unless it is the only one left
    assert pace.cap(0, 3, 1000) == 3  # never more than it asked for
