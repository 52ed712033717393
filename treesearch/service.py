"""Search as a service: chat requests become searches on a warm engine, one per profile.

A :class:`SearchService` holds the profiles (each a resolved job: its task, its algorithm and
budget as defaults and maxima, and the engine's transports to the shared pools) and one
:class:`~treesearch.engine.Engine` per profile: every request in flight is one search on it, so
the requests of concurrent clients are batched together at the pools, as a batch job's problems
are. A request's budget is its own (its own guard), capped by its profile's.

Admission is bounded: ``max_in_flight`` searches run at once, ``max_queued`` more wait, and the
next one is refused with 429 and ``Retry-After``. A deadline is a wall-seconds budget (asks are
refused once it passes, the search answers with what it has) and, ``grace_s`` later, a hard stop
(the search is cancelled and the best finished chain its tree holds is the answer). A caller
that goes away cancels its search: its queued requests are dropped at the batcher and at the
pools' routers, and the capacity goes to the others.

Every search is written to the service's run dir (``results.jsonl``, ``trees/``, a live
``status.json``), the oldest trees deleted past ``retain``, so ``treesearch view`` and
``treesearch status --run-dir`` work on it. No Ray here: :mod:`actors.service` serves it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from treesearch.algorithms import parse_algorithm
from treesearch.budget import Budget
from treesearch.engine import Engine, EngineOptions, SearchSpec, make_spec
from treesearch.errors import ConfigError
from treesearch.export import to_json_doc
from treesearch.feed import Lease
from treesearch.job import Job, transports
from treesearch.openai_api import APIError, ChatRequest
from treesearch.protocol import Generator, Scorer
from treesearch.results import ProblemResult
from treesearch.schema import build
from treesearch.selection import chain_score
from treesearch.service_runs import RunStore
from treesearch.tasks.base import Problem
from treesearch.tree import TERMINAL, Tree

# (generator, scorer): the clients of a profile's pools, or None for its in-process backends
PoolClients = Callable[[Job], tuple[Generator | None, Scorer | None]]


@dataclass(frozen=True)
class ServiceOptions:
    """How one ingress serves (each ingress replica has its own engines and limits).

    Attributes:
      max_in_flight: searches running at once, over every profile.
      max_queued: requests waiting for one of those; past it, 429.
      retry_after_s: the ``Retry-After`` of a 429 (and of a 503 while the pools start).
      grace_s: after a request's deadline, when its search is cancelled if it has not answered.
      retain: trees kept in the run dir (the oldest deleted past it); ``results.jsonl`` keeps
        about as many rows.
    """

    max_in_flight: int = 64
    max_queued: int = 256
    retry_after_s: float = 1.0
    grace_s: float = 2.0
    retain: int = 10_000


@dataclass
class Profile:
    """A model id: its resolved job (task, defaults and maxima) and its engine."""

    name: str
    job: Job
    engine: Engine
    generator: Generator
    problems: dict[str, Problem]  # the problems in flight (the task checks look them up)


@dataclass
class Outcome:
    """A finished request: its search's result and tree, why it stopped, what it was given."""

    request_id: str
    profile: Profile
    problem: Problem
    result: ProblemResult
    tree: Tree
    stopped: str  # verified | threshold | budget | complete | deadline | cancelled
    budget: dict[str, float]
    algorithm: str


class Observer(Protocol):
    """What a service tells its metrics (``actors.service.Metrics``)."""

    def done(self, model: str, seconds: float) -> None: ...

    def queue(self, running: int, waiting: int) -> None: ...

    def refused(self) -> None: ...


@runtime_checkable
class InFlight(Protocol):
    """A transport that knows how many of its requests are at its replicas now."""

    def in_flight(self) -> int: ...


class Terms(NamedTuple):
    """What a request was given: its budget (limits by unit) and its algorithm."""

    budget: dict[str, float]
    algorithm: str


class Admission:
    """At most ``limit`` holders at once, at most ``queue`` waiting; the next is refused (429)."""

    def __init__(self, limit: int, queue: int, retry_after_s: float, observer: Observer | None = None):
        self.limit, self.queue, self.retry_after_s, self.observer = limit, queue, retry_after_s, observer
        self.running = 0
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.rejected = 0

    def _changed(self) -> None:
        if self.observer is not None:
            self.observer.queue(self.running, len(self.waiting))

    async def __aenter__(self) -> None:
        if self.running < self.limit and not self.waiting:
            self.running += 1
            self._changed()
            return
        if len(self.waiting) >= self.queue:
            self.rejected += 1
            if self.observer is not None:
                self.observer.refused()
            raise APIError(
                429,
                f"{self.running} searches running and {len(self.waiting)} waiting: try again later",
                code="queue_full",
                retry_after_s=self.retry_after_s,
            )
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        self._changed()
        try:
            await turn  # the leaving holder hands its place over (running stays counted)
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed over as we went: pass it on
                self._leave()
            else:
                self.waiting.remove(turn)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._leave()

    def _leave(self) -> None:
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                self._changed()
                return
        self.running -= 1
        self._changed()


class SearchService:
    """The searches of one ingress (see module docstring).

    Args:
      jobs: profile name (a ``model`` id) -> its resolved job.
      clients: the clients of a job's pools (its in-process backends where None).
      options: limits and retention.
      run_dir: where every search is written (None: nowhere).
      observer: hears each answer's latency, the admission queue and each refusal (metrics).
    """

    def __init__(
        self,
        jobs: dict[str, Job],
        clients: PoolClients,
        options: ServiceOptions = ServiceOptions(),
        run_dir: Path | None = None,
        observer: Observer | None = None,
    ):
        self.options, self.created, self.observer = options, int(time.time()), observer
        self.admission = Admission(options.max_in_flight, options.max_queued, options.retry_after_s, observer)
        self.profiles: dict[str, Profile] = {}
        for name, job in jobs.items():
            problems: dict[str, Problem] = {}
            generator, scorer = transports(job, *clients(job), problems=problems)
            engine = Engine(generator, scorer, EngineOptions(concurrency=options.max_in_flight))
            self.profiles[name] = Profile(name, job, engine, generator, problems)
        first = next(iter(jobs.values()))
        self.store = RunStore(run_dir, options.retain, first.to_dict()) if run_dir is not None else None
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)  # the newest
        self.answered = 0

    # ------------------------------------------------------------------ requests
    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise APIError(
                404,
                f"model {name!r} does not exist (models: {', '.join(self.profiles)})",
                "model",
                "model_not_found",
            )
        return self.profiles[name]

    async def run(
        self, req: ChatRequest, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> Outcome:
        """Searches ``req`` (waiting for admission); ``progress`` hears the search's figures
        about once a second while it runs. Cancelling this cancels the search."""
        profile = self.profile(req.model)
        problem = self._problem(profile, req)
        spec, budget, algorithm = self._spec(profile, req)
        async with self.admission:
            started = time.perf_counter()
            if self.store is not None:
                self.store.progress.total += 1
            profile.problems[problem.id] = problem
            try:
                outcome = await self._search(profile, problem, spec, Terms(budget, algorithm), req, progress)
            finally:
                profile.problems.pop(problem.id, None)
            self.latencies.append(time.perf_counter() - started)
            self.answered += 1
            if self.observer is not None:
                self.observer.done(profile.name, self.latencies[-1])
        if self.store is not None:
            self.store.write(outcome)
        return outcome

    def _problem(self, profile: Profile, req: ChatRequest) -> Problem:
        task = profile.job.task
        try:
            problem = task.problem_from_text(req.question())  # type: ignore[attr-defined]
        except ValueError as e:
            raise APIError(400, f"messages: {e}", "messages") from None
        return dataclasses.replace(problem, id=f"req-{uuid.uuid4().hex[:16]}")

    def _spec(self, profile: Profile, req: ChatRequest) -> tuple[SearchSpec, dict[str, float], str]:
        """The request's search: its algorithm and params over the profile's, its budget within
        the profile's caps, its seed."""
        job, opts = profile.job, req.treesearch
        section = dict(job.cfg.algorithm)
        if opts.algorithm is not None and opts.algorithm != section.get("name"):
            section = {"name": opts.algorithm}
        try:
            algorithm, options = parse_algorithm({**section, **opts.params}, "treesearch.params")
        except ConfigError as e:
            param = str(e).split(":")[0].replace("treesearch.params.name", "treesearch.algorithm")
            raise APIError(
                400, str(e).replace("treesearch.params.name", "treesearch.algorithm"), param
            ) from None
        budget = self._budget(job.cfg.budget, req)

        async def search(ctx: Any) -> int | None:
            return await algorithm.run(ctx, options)

        spec = make_spec(job.task, search, profile.generator, budget, job.max_step_tokens)
        seed = opts.seed if opts.seed is not None else (req.seed or 0)
        return dataclasses.replace(spec, seed=seed), budget.limits(), algorithm.name

    @staticmethod
    def _budget(cap: Budget, req: ChatRequest) -> Budget:
        """The profile's budget with the request's limits, each at most the profile's."""
        limits = cap.limits()
        asked = dict(req.treesearch.budget)
        if (tokens := req.token_cap()) is not None:  # max_completion_tokens: generated tokens
            asked["generated_tokens"] = min(tokens, asked.get("generated_tokens", tokens))
        if req.treesearch.deadline_s is not None:
            asked["seconds"] = req.treesearch.deadline_s
        fields = {**dataclasses.asdict(cap), "scope": "problem"}
        for unit, amount in asked.items():
            value = min(amount, limits.get(unit, amount))
            fields[unit] = value if unit in ("flops", "seconds") else max(1, int(value))
        try:
            return build(Budget, fields, "treesearch.budget")
        except ConfigError as e:
            raise APIError(400, str(e), str(e).split(":")[0]) from None

    async def _search(
        self,
        profile: Profile,
        problem: Problem,
        spec: SearchSpec,
        terms: Terms,
        req: ChatRequest,
        progress: Callable[[dict[str, Any]], None] | None,
    ) -> Outcome:
        engine = profile.engine
        task = asyncio.ensure_future(engine.search_one(Lease(problem), spec))
        deadline = req.treesearch.deadline_s
        stop_at = None if deadline is None else time.monotonic() + deadline + self.options.grace_s
        try:
            while not task.done():
                wait = 1.0 if stop_at is None else max(0.0, min(1.0, stop_at - time.monotonic()))
                await asyncio.wait([task], timeout=wait)
                if not task.done() and stop_at is not None and time.monotonic() >= stop_at:
                    return await self._cut(profile, problem, spec, terms, task, "deadline")
                if not task.done() and progress is not None:
                    progress(self._figures(engine, problem.id))
            result, tree = task.result()
        except asyncio.CancelledError:  # the client went away: its search stops, its cost is booked
            if not task.done() and self.store is not None:
                self.store.write(await self._cut(profile, problem, spec, terms, task, "cancelled"))
            raise
        finally:
            task.cancel()
        stopped = result.stop_reason
        if deadline is not None and result.ledger.wall_seconds >= deadline and stopped == "budget":
            stopped = "deadline"
        return Outcome(problem.id, profile, problem, result, tree, stopped, terms.budget, terms.algorithm)

    async def _cut(
        self,
        profile: Profile,
        problem: Problem,
        spec: SearchSpec,
        terms: Terms,
        task: asyncio.Future,
        reason: str,
    ) -> Outcome:
        """Cancels a running search (its deadline and grace are past, or its client went away);
        the best finished chain of its tree so far is the answer, its ledger what it spent."""
        engine = profile.engine
        tree = engine.trees.trees.get(problem.id) or Tree(problem.prompt, [], problem.id)
        guard = engine.trees.guards.get(problem.id)
        ledger = guard.spent.copy() if guard is not None else None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        finished = [n for n in tree.terminals() if tree.prm_score[n] == tree.prm_score[n]]
        node = max(finished, key=lambda n: (chain_score(tree, n), -n), default=None)
        from treesearch.results import evaluate

        result = evaluate(problem, spec.task, tree, node, ledger if ledger is not None else _empty_ledger())
        result.stop_reason = reason
        return Outcome(problem.id, profile, problem, result, tree, reason, terms.budget, terms.algorithm)

    @staticmethod
    def _figures(engine: Engine, problem_id: str) -> dict[str, Any]:
        """A running search's figures for a progress chunk."""
        tree, guard = engine.trees.trees.get(problem_id), engine.trees.guards.get(problem_id)
        if tree is None or guard is None:
            return {}
        spent = guard.spent
        scored = [tree.prm_score[n] for n in tree.terminals() if tree.prm_score[n] == tree.prm_score[n]]
        return {
            "nodes": len(tree) - 1,
            "finished": len(tree.terminals()),
            "best_score": max(scored, default=None),
            "generated_tokens": spent.policy_generated_tokens,
            "prm_tokens": spent.prm_tokens,
        }

    def status(self) -> dict[str, Any]:
        """What this ingress is doing now: admission, answers' latency (s) and, per model, its
        open searches, the requests queued at its engine or in flight at its generator pool,
        and the generator calls made (``max_searches_per_generator_call`` > 1: searches of
        different requests shared a call)."""
        lat = sorted(self.latencies)
        pct = {f"p{p}": round(lat[min(len(lat) - 1, len(lat) * p // 100)], 3) for p in (50, 95) if lat}
        models = {}
        for name, p in self.profiles.items():
            batcher = p.engine.batcher
            models[name] = {
                "searches": len(p.engine.trees.trees),
                "queued_requests": batcher.pending(),
                "generator_in_flight": p.generator.in_flight() if isinstance(p.generator, InFlight) else None,
                "generator_calls": batcher.generator_batches,
                "generator_requests": batcher.generator_requests,
                "max_searches_per_generator_call": batcher.max_searches_per_call,
                "dropped_requests": batcher.dropped,
            }
        adm = self.admission
        return {
            "uptime_s": round(time.time() - self.created, 1),
            "running": adm.running,
            "queued": len(adm.waiting),
            "rejected": adm.rejected,
            "answered": self.answered,
            "latency_s": pct,
            "models": models,
        }

    # ------------------------------------------------------------------ trees
    def tree(self, tree_id: str) -> tuple[Tree, dict[str, Any]]:
        """A served search's tree and results row (from the run dir); 404 if unknown or gone
        past retention."""
        if self.store is None or not self.store.has(tree_id):
            raise APIError(404, f"tree {tree_id!r} is not (or no longer) kept", "tree_id", "tree_not_found")
        return self.store.get(tree_id)


def _empty_ledger() -> Any:
    from treesearch.budget import Ledger

    return Ledger()


# ----------------------------------------------------------------------------- answers
def choices(outcome: Outcome, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` distinct answers: the search's own first, then the other finished chains by
    score; each ``{node, content, finish_reason, tokens}``."""
    tree, task = outcome.tree, outcome.profile.job.task
    first = outcome.result.answer_node
    ranked = sorted((t for t in tree.terminals() if t != first), key=lambda t: (-chain_score(tree, t), t))
    nodes, seen = [], set()
    for node in ([first] if first is not None else []) + ranked:
        steps = tuple(tree.steps(node))
        if steps not in seen:
            seen.add(steps)
            nodes.append(node)
        if len(nodes) == n:
            break
    out = []
    for node in nodes:
        finished = tree.status[node] == TERMINAL and outcome.stopped != "deadline"
        out.append(
            {
                "node": node,
                "content": task.step_delimiter.join(tree.steps(node)),
                "finish_reason": "stop" if finished else "length",
                "tokens": sum(len(tree.token_ids[p]) for p in tree.path(node)[1:]),
            }
        )
    if not out:  # nothing finished in the budget: an empty answer, cut short
        out.append({"node": None, "content": "", "finish_reason": "length", "tokens": 0})
    return out


def summary(outcome: Outcome, picked: Sequence[dict[str, Any]], return_tree: str) -> dict[str, Any]:
    """The response's ``treesearch`` object."""
    result, tree, led = outcome.result, outcome.tree, outcome.result.ledger
    check = getattr(outcome.profile.job.task, "check_solution", None)
    node = picked[0]["node"]
    verified = None if check is None or node is None else bool(check(outcome.problem, tree.steps(node)))
    out: dict[str, Any] = {
        "tree_id": outcome.request_id,
        "algorithm": outcome.algorithm,
        "stopped_reason": outcome.stopped,
        "chosen_score": result.answer_score,
        "verified": verified,
        "budget": outcome.budget,
        "ledger": {k: v for k, v in led.to_dict().items() if k != "wall_seconds"}
        | {"seconds": led.wall_seconds},
    }
    if return_tree == "summary":
        out["tree"] = {
            "nodes": len(tree) - 1,
            "finished": len(tree.terminals()),
            "depth": max(tree.depth, default=0),
            "chosen_path": tree.path(node) if node is not None else [],
        }
    elif return_tree == "full":
        out["tree"] = to_json_doc(tree)
    return out
