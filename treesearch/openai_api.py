"""The OpenAI chat-completions shapes the search service speaks: requests in, completions,
chunks and errors out (no HTTP and no Ray here: :mod:`treesearch.http` serves them).

A request is an ordinary ``POST /v1/chat/completions`` body, so the official ``openai`` client
works unchanged. Its ``model`` names a search profile; the task turns the last user message into
a problem; search settings go under one extra key, ``treesearch`` (``extra_body`` in the client):
``algorithm``, ``params``, ``budget`` (``{unit: amount}``), ``deadline_s``, ``seed``,
``return_tree``. Other OpenAI fields keep their meaning (``n``, ``stream``,
``max_completion_tokens``, ``seed``) or are refused with ``param`` set when the search cannot
honour them; fields OpenAI does not define are refused too (a typo must not pass silently).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from treesearch.budget import BUDGET_UNITS

MAX_MESSAGES = 256  # a search's problem is one question: more messages are refused (413 is for bytes)
MAX_N = 64  # distinct leaves a request may ask for


class APIError(Exception):
    """A request the service refuses, in OpenAI's error shape (``error.message``, ``type``,
    ``param``, ``code``), with its HTTP status and, for 429 / 503, ``Retry-After`` seconds."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_error",
    }

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(math.ceil(self.retry_after_s))} if self.retry_after_s is not None else {}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # name, tool_call_id ...: carried, unused
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class SearchOptions(_Strict):
    """The ``treesearch`` key of a request (every field optional: the profile's own otherwise)."""

    algorithm: str | None = None  # an algorithm name (treesearch.algorithms)
    params: dict[str, Any] = Field(default_factory=dict)  # the algorithm's fields
    budget: dict[str, float | int] = Field(default_factory=dict)  # {unit: amount}, capped by the profile's
    deadline_s: float | int | None = Field(default=None, gt=0, le=3600, allow_inf_nan=False)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**32 - 1)
    return_tree: Literal["none", "summary", "full"] = "none"


# OpenAI fields a search has no use for, accepted at their neutral value only
NEUTRAL = {
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "parallel_tool_calls": None,
    "tool_choice": "none",
    "response_format": None,
    "stop": None,
    "logit_bias": None,
    "top_logprobs": None,
    "tools": None,
    "functions": None,
    "function_call": None,
    "modalities": None,
    "audio": None,
    "prediction": None,
    "reasoning_effort": None,
    "service_tier": None,
    "store": None,
    "metadata": None,
    "user": None,
    "web_search_options": None,
}


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` (see module docstring)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    n: StrictInt = Field(default=1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | int | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)  # the older name of the same cap
    seed: StrictInt | None = Field(default=None, ge=0, le=2**32 - 1)
    treesearch: SearchOptions = Field(default_factory=SearchOptions)

    def question(self) -> str:
        """The last user message's text (what the task turns into a problem)."""
        users = [m for m in self.messages if m.role == "user"]
        if not users or not users[-1].text().strip():
            raise APIError(
                400, "messages: the last user message holds the problem; there is none", "messages"
            )
        return users[-1].text()

    def token_cap(self) -> int | None:
        both = self.max_completion_tokens is not None and self.max_tokens is not None
        if both and self.max_completion_tokens != self.max_tokens:
            raise APIError(400, "give max_completion_tokens or max_tokens, not both", "max_tokens")
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(body: Any) -> ChatRequest:
    """A chat request from a decoded JSON body; an :class:`APIError` (400, ``param`` set) for a
    body of the wrong shape or a field the search cannot honour."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", None)
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "literal[")))
        detail = first["msg"]
        if first["type"] in ("extra_forbidden",):
            detail = "unknown field"
        raise APIError(400, f"{param or 'body'}: {detail}", param or None) from None
    for key, value in (req.model_extra or {}).items():
        if key not in NEUTRAL:
            raise APIError(400, f"{key}: not a chat-completions field this server knows", key)
        if value != NEUTRAL[key] and not (value is None or value == {} or value == []):
            neutral = NEUTRAL[key]
            raise APIError(
                400, f"{key}: a tree search does not support it (omit it or send {neutral!r})", key
            )
    for unit, amount in req.treesearch.budget.items():
        if unit not in BUDGET_UNITS:
            raise APIError(
                400,
                f"treesearch.budget.{unit}: not a budget unit ({', '.join(BUDGET_UNITS)})",
                f"treesearch.budget.{unit}",
            )
        positive = isinstance(amount, int | float) and math.isfinite(amount) and amount > 0
        if isinstance(amount, bool) or not positive:
            raise APIError(
                400,
                f"treesearch.budget.{unit}: {amount!r} is not a positive number",
                f"treesearch.budget.{unit}",
            )
    return req


# ----------------------------------------------------------------------------- responses
def usage(ledger: dict[str, Any], returned_tokens: int) -> dict[str, Any]:
    """OpenAI ``usage`` from a search's ledger: ``prompt_tokens`` every prompt token the generator
    ran (cached ones in ``prompt_tokens_details``), ``completion_tokens`` every token it
    generated, of which ``reasoning_tokens`` were not returned in the choices."""
    prompt, generated = int(ledger["policy_prompt_tokens"]), int(ledger["policy_generated_tokens"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": int(ledger["policy_cached_prompt_tokens"])},
        "completion_tokens_details": {"reasoning_tokens": max(0, generated - returned_tokens)},
    }


def completion(
    request_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A ``chat.completion`` body; ``choices``: ``{content, finish_reason}`` each."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c["content"]},
                "finish_reason": c["finish_reason"],
                "logprobs": None,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage_,
        "treesearch": extra,
    }


def chunk(
    request_id: str, created: int, model: str, deltas: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``deltas``: ``{index, delta, finish_reason}`` each."""
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"logprobs": None, **d} for d in deltas],
        **extra,
    }


def model_list(names: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": "treesearch"} for n in names],
    }
