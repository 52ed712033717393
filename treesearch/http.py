"""The service's HTTP face: an OpenAI-compatible FastAPI app over a :class:`SearchService`.

    GET  /v1/models                 the profiles
    POST /v1/chat/completions       a search (``stream: true``: server-sent events)
    GET  /v1/trees/{tree_id}        the search tree: the export JSON, or ``?format=html`` the viewer
    GET  /v1/status                 what this ingress is doing (:meth:`SearchService.status`)

Every error is OpenAI's shape (``{"error": {message, type, param, code}}``) with its status:
400 a bad parameter (``param`` set), 401 a missing or wrong API key (compared in constant
time), 404 an unknown model, tree or route, 413 a body over the limit, 429 with ``Retry-After``
when the admission queue is full, 503 when a pool is gone. An expected stop (a deadline, the
budget) is a 200 with ``finish_reason: "length"``: the client's SDK retries 408 and 5xx.

A streamed search sends SSE comments as keep-alives and progress chunks (an empty delta and a
``treesearch.progress`` object) while it runs, then its chain as deltas, a last chunk with the
finish reasons, a usage chunk (``stream_options.include_usage``) and ``data: [DONE]``. A client
that goes away (a closed stream, a dropped connection) cancels its search.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from treesearch import openai_api as api
from treesearch.export import to_json_doc
from treesearch.openai_api import APIError, ChatRequest
from treesearch.protocol import BackendUnavailable
from treesearch.service import Outcome, SearchService, choices, summary

MAX_BODY = 1 << 20  # bytes of a request body (a search's problem is one question)
KEEPALIVE_S = 5.0  # SSE comment while a search runs and has nothing new to say


def make_app(service: SearchService, api_key: str | None = None, max_body: int = MAX_BODY) -> FastAPI:
    """The app (see module docstring); ``api_key``: required as ``Authorization: Bearer KEY``."""

    def authorize(request: Request) -> None:
        """``Authorization: Bearer KEY``, compared in constant time (a plain ASGI check: an
        HTTP middleware would hide the client's disconnect from the search it must cancel)."""
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                raise APIError(
                    401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key"
                )

    app = FastAPI(title="treesearch", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorize)])  # fmt: skip

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        err = APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        return _unexpected(e)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return api.model_list(list(service.profiles), service.created)

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return service.status()

    @app.get("/v1/trees/{tree_id}")
    async def tree(tree_id: str, format: str = "json") -> Response:
        return _tree(service, tree_id, format)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        req = api.parse_request(await _json_body(request, max_body))
        if req.stream:
            return StreamingResponse(
                _events(service, req, request),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        outcome = await _until_disconnected(service.run(req), request)
        return JSONResponse(_completion(req, outcome))

    return app


def _tree(service: SearchService, tree_id: str, format: str) -> Response:
    """A served search's tree: the export JSON, or the self-contained viewer page."""
    if format not in ("json", "html"):
        raise APIError(400, "format: json or html", "format")
    tree, row = service.tree(tree_id)
    doc = to_json_doc(tree, row)
    if format == "json":
        return JSONResponse(doc)
    from treesearch.viewer import problem_payload, render_html

    run = {"name": tree_id, "algorithm": row.get("algorithm", "?"), "accuracy": 0.0, "coverage": 0.0,
           "problems": [problem_payload(doc, row)]}  # fmt: skip
    return HTMLResponse(render_html([run]))


def _unexpected(e: BaseException) -> JSONResponse:
    if isinstance(e, BackendUnavailable):
        err = APIError(503, f"the service cannot search now: {e}", code="pool_unavailable", retry_after_s=5)
    else:  # a bug of ours: said in one line, never a traceback
        err = APIError(500, f"internal error: {type(e).__name__}", code="internal_error")
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


async def _json_body(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes, 400 for what is no UTF-8 JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, f"the request body is {int(declared):,} bytes (at most {limit:,})", code="body_too_large"
        )
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"the request body is over {limit:,} bytes", code="body_too_large")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8", None) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", None) from None
    except ValueError as e:
        raise APIError(400, f"the request body is not JSON: {str(e)[:80]}", None) from None


async def _until_disconnected(work: Any, request: Request) -> Any:
    """Awaits ``work``; a client that goes away cancels it (and the search under it)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise asyncio.CancelledError("the client went away")
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _completion(req: ChatRequest, outcome: Outcome) -> dict[str, Any]:
    picked = choices(outcome, req.n)
    returned = sum(c["tokens"] for c in picked)
    return api.completion(
        _id(outcome),
        int(time.time()),
        req.model,
        picked,
        api.usage(outcome.result.ledger.to_dict(), returned),
        summary(outcome, picked, req.treesearch.return_tree),
    )


def _id(outcome: Outcome) -> str:
    return f"chatcmpl-{outcome.request_id.removeprefix('req-')}"


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _events(service: SearchService, req: ChatRequest, request: Request) -> AsyncIterator[str]:
    """The SSE stream of one search (see module docstring)."""
    created, progress_q = int(time.time()), asyncio.Queue()
    run = asyncio.ensure_future(service.run(req, progress=progress_q.put_nowait))
    head = f"chatcmpl-pending-{id(run):x}"
    try:
        yield _sse(
            api.chunk(
                head,
                created,
                req.model,
                [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    for i in range(req.n)
                ],
            )
        )
        while not run.done():
            getter = asyncio.ensure_future(progress_q.get())
            done, _ = await asyncio.wait(
                [run, getter], timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            getter.cancel()
            if getter in done and not getter.cancelled():
                yield _sse(api.chunk(head, created, req.model, [], treesearch={"progress": getter.result()}))
            elif not done:
                yield ": keep-alive\n\n"
        try:
            outcome = run.result()
        except APIError as e:
            yield _sse(e.body())
            return
        except Exception as e:  # said in the stream, one line, as a client reads it
            yield _sse(json.loads(_unexpected(e).body))
            return
        async for event in _answer_events(req, outcome, created):
            yield event
    finally:
        run.cancel()


async def _answer_events(req: ChatRequest, outcome: Outcome, created: int) -> AsyncIterator[str]:
    """The chosen chains as deltas (a step each), the finish reasons, usage, ``[DONE]``."""
    cid, picked = _id(outcome), choices(outcome, req.n)
    for i, c in enumerate(picked):
        for piece in c["content"].splitlines(keepends=True) or [""]:
            yield _sse(
                api.chunk(
                    cid,
                    created,
                    req.model,
                    [{"index": i, "delta": {"content": piece}, "finish_reason": None}],
                )
            )
    final = [{"index": i, "delta": {}, "finish_reason": c["finish_reason"]} for i, c in enumerate(picked)]
    extra = summary(outcome, picked, req.treesearch.return_tree)
    yield _sse(api.chunk(cid, created, req.model, final, treesearch=extra))
    if req.stream_options is not None and req.stream_options.include_usage:
        usage = api.usage(outcome.result.ledger.to_dict(), sum(c["tokens"] for c in picked))
        yield _sse(api.chunk(cid, created, req.model, [], usage=usage))
    yield "data: [DONE]\n\n"
