"""The FastAPI app of a replica: typed routes for the checkpoint's task and JSON errors for the rest.

Only the checkpoint's task gets routes (the task lists them, trainers/tasks; `ROUTES` maps each to
the function that adds it), so /docs shows exactly what works; the other task routes answer 404
with a reason naming the task. Every failure, including Starlette's own (404, 405) and FastAPI's
validation errors, comes back as `ErrorResponse`.

Text is checked at the edge: a string that is not valid Unicode (a lone UTF-16 surrogate such as
"\\ud800", which JSON can carry but UTF-8 cannot) is rejected with 422 naming the field, never
replaced, so the model never sees text other than what was sent. An item that passes the edge and
still fails in the model is answered 422 naming the item; the other requests in its batch are not
affected (engine.run_isolated).

The bearer token is checked twice: by the Guard before any body is read, and by FastAPI's
`HTTPBearer` on every /v1 route, which puts the scheme in the OpenAPI document (the Authorize
button of /docs). /docs and /redoc serve Swagger UI and ReDoc from the installed
`fastapi-offline` package, so they work without network.

The generation routes speak OpenAI's API: `stream: true` answers Server-Sent Events
(`data: {chunk}` ... `data: [DONE]`) through a StreamingResponse; a client that goes away sets its
items' cancel flags, which end their rows at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from trainers.tasks import get_task, task_of_route

from .config import ServeSection
from .engine import Engine, Generation, GenerationItem, Rejected
from .guard import Guard, error_response, route_path, token_matches
from .metrics import NullMetrics
from .schemas import (
    IGNORED_FIELDS_HEADER,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ClassifyRequest,
    ClassifyResponse,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Entity,
    ErrorDetail,
    ErrorResponse,
    FieldError,
    Health,
    LabelScore,
    ModelCard,
    ModelList,
    TagRequest,
    TagResponse,
    TokenLogprob,
    TopLogprob,
    Usage,
)

log = logging.getLogger(__name__)

CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
# OpenAPI 3.1 reads an event stream's schema as the schema of each event
_SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "A chunk as JSON (CompletionChunk or ChatCompletionChunk), an {\"error\": ...} "
    "object if the stream fails after it began, or [DONE] last."}}}
_STREAMED = {200: {"content": {"text/event-stream": {"schema": _SSE_EVENT}},
                   "description": "JSON, or with stream: true Server-Sent Events of chunks ending with [DONE]."}}


def served_routes(task: str, chat: bool) -> list[str]:
    """The task's routes (trainers/tasks), less chat when the tokenizer has no chat template."""
    return [r for r in get_task(task).routes if r != CHAT_ROUTE or chat]


class ApiError(Exception):
    def __init__(self, code: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.kind, self.message, self.param = code, kind, message, param


@dataclass(frozen=True)
class Selected:
    """The model a request asked for: an adapter (None: the app's checkpoint) and its served id."""

    adapter: str | None
    model_id: str


class Backend(Protocol):
    """What the routes need from a replica: one call per input; batching happens behind it.
    Each call returns its result (or why that input cannot run) and the size of its batch."""

    engine: Engine

    async def select(self, model: str | None) -> Selected: ...
    async def classify(self, text: str, adapter: str | None) -> tuple[list[float] | Rejected, int]: ...
    async def tag(self, text: str, adapter: str | None) -> tuple[list[Entity] | Rejected, int]: ...
    async def generate(self, item: GenerationItem) -> tuple[list[Generation] | Rejected, int]: ...
    def stream_opened(self) -> None: ...
    def stream_closed(self) -> None: ...
    def health(self) -> Health: ...


def build_http_app(backend: Backend, *, cards: list[ModelCard], serve: ServeSection, token: str | None,
                   metrics=None) -> FastAPI:
    """cards[0] is the app's own checkpoint; the rest are its adapters (same routes)."""
    card = cards[0]
    app = FastAPIOffline(
        title=f"zerotune: {card.id}",
        description=f"A {card.task} model served by zerotune. Routes: {', '.join(card.routes)}.",
        version="1",
    )
    _install_error_handlers(app, card)
    auth = [Depends(_bearer_check(token))] if token else []

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return backend.health()

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS, dependencies=auth)
    async def models() -> ModelList:
        return ModelList(data=cards)

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=_ERRORS, dependencies=auth)
    async def model(model_id: str) -> ModelCard:
        found = next((c for c in cards if c.id == model_id), None)
        if found is None:
            raise ApiError(404, "model_not_found", f"model {model_id!r} is not served here; this endpoint serves "
                           f"{', '.join(repr(c.id) for c in cards)}")
        return found

    for route in card.routes:  # only the checkpoint's task's routes, so /docs shows what works
        ROUTES[route](app, backend, card, serve, auth)
    app.add_middleware(Guard, token=token, max_body_bytes=serve.max_body_bytes)
    app.add_middleware(Measured, metrics=metrics or NullMetrics())
    return app


def _bearer_check(token: str):
    scheme = HTTPBearer(auto_error=False, description="The token the server reads from serve.auth_token_env or "
                        "serve.auth_token_file: send 'Authorization: Bearer <token>'.")

    # a default, not Annotated: this module's annotations are strings, and `scheme` is local
    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:  # noqa: B008
        given = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        if not token_matches(given, token):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'")

    return check


# --- classification and tagging ---------------------------------------------------------------


def _add_classify(app: FastAPI, backend: Backend, card: ModelCard, serve: ServeSection, auth: list) -> None:
    labels = card.labels or []

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=_ERRORS, dependencies=auth)
    async def classify(req: ClassifyRequest) -> ClassifyResponse:
        _check_inputs(req.inputs, serve)
        if req.top_k > len(labels):
            raise ApiError(422, "invalid_request", f"top_k {req.top_k} exceeds the model's {len(labels)} labels",
                           param="top_k")
        selected = await _select(backend, req.model)
        outs = await asyncio.gather(*(backend.classify(text, selected.adapter) for text in req.inputs))
        results = []
        for i, (probs, _) in enumerate(outs):
            _raise_if_rejected(probs, f"inputs.{i}")
            best = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[: req.top_k]
            results.append([LabelScore(label=labels[j], score=probs[j]) for j in best])
        return ClassifyResponse(model=selected.model_id, results=results, batch_size=max(bs for _, bs in outs))


def _add_tag(app: FastAPI, backend: Backend, card: ModelCard, serve: ServeSection, auth: list) -> None:
    @app.post("/v1/tag", response_model=TagResponse, responses=_ERRORS, dependencies=auth)
    async def tag(req: TagRequest) -> TagResponse:
        _check_inputs(req.inputs, serve)
        selected = await _select(backend, req.model)
        outs = await asyncio.gather(*(backend.tag(text, selected.adapter) for text in req.inputs))
        for i, (entities, _) in enumerate(outs):
            _raise_if_rejected(entities, f"inputs.{i}")
        return TagResponse(model=selected.model_id, results=[e for e, _ in outs], batch_size=max(bs for _, bs in outs))


# --- generation (OpenAI) ------------------------------------------------------------------------


def _add_completions(app: FastAPI, backend: Backend, card: ModelCard, serve: ServeSection, auth: list) -> None:
    @app.post("/v1/completions", response_model=CompletionResponse, responses={**_ERRORS, **_STREAMED},
              dependencies=auth)
    async def completions(req: CompletionRequest, response: Response):
        prompts = req.prompts
        if len(prompts) > serve.max_items_per_request:
            raise ApiError(422, "too_many_items", f"prompt has {len(prompts)} items; at most "
                           f"{serve.max_items_per_request} per request (serve.max_items_per_request)", param="prompt")
        where = ["prompt"] if isinstance(req.prompt, str) else [f"prompt.{i}" for i in range(len(prompts))]
        for loc, text in zip(where, prompts, strict=True):
            _check_chars(loc, text, serve)
        selected = await _select(backend, req.model)
        limit = req.max_tokens or min(COMPLETIONS_DEFAULT_MAX_TOKENS, serve.max_new_tokens)
        items = [_item(req, prompt, chat=False, max_tokens=limit, logprobs=req.logprobs, adapter=selected.adapter,
                       serve=serve) for prompt in prompts]
        ignored = _ignored_header(req)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return await _stream(backend, items, where, _completion_chunks(cid, created, selected.model_id),
                                 include_usage=req.include_usage, headers=ignored)
        outs = await _generate_all(backend, items, where)
        choices = []
        for p, (gens, _) in enumerate(outs):
            for j, gen in enumerate(gens):
                choices.append(CompletionChoice(index=p * req.choices_per_prompt + j, text=gen.text,
                                                finish_reason=gen.finish_reason,
                                                logprobs=_completion_logprobs(gen, len(prompts[p]))))
        response.headers.update(ignored)
        return CompletionResponse(id=cid, created=created, model=selected.model_id, choices=choices,
                                  usage=_usage([g for g, _ in outs]), batch_size=max(bs for _, bs in outs))


def _add_chat(app: FastAPI, backend: Backend, card: ModelCard, serve: ServeSection, auth: list) -> None:
    @app.post(CHAT_ROUTE, response_model=ChatCompletionResponse, responses={**_ERRORS, **_STREAMED},
              dependencies=auth)
    async def chat(req: ChatCompletionRequest, response: Response):
        if len(req.messages) > serve.max_items_per_request:
            raise ApiError(422, "too_many_items", f"messages has {len(req.messages)} items; at most "
                           f"{serve.max_items_per_request} per request (serve.max_items_per_request)", param="messages")
        for i, m in enumerate(req.messages):
            _check_text(f"messages.{i}.content", m.text)
        _check_chars("messages (all contents together)", "".join(m.text for m in req.messages), serve)
        try:
            prompt = backend.engine.render_chat([m.for_template() for m in req.messages])
        except Exception as err:  # the template itself may refuse a conversation (jinja raise_exception)
            raise ApiError(422, "invalid_request", f"the chat template rejected these messages: {err}",
                           param="messages") from None
        selected = await _select(backend, req.model)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        item = _item(req, prompt, chat=True, max_tokens=req.token_limit, logprobs=logprobs, adapter=selected.adapter,
                     serve=serve)
        ignored = _ignored_header(req)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return await _stream(backend, [item], ["messages"], _chat_chunks(cid, created, selected.model_id),
                                 include_usage=req.include_usage, headers=ignored)
        [(gens, batch)] = await _generate_all(backend, [item], ["messages"])
        choices = [ChatChoice(index=j, message=AssistantMessage(content=g.text), finish_reason=g.finish_reason,
                              logprobs=_chat_logprobs(g)) for j, g in enumerate(gens)]
        response.headers.update(ignored)
        return ChatCompletionResponse(id=cid, created=created, model=selected.model_id, choices=choices,
                                      usage=_usage([gens]), batch_size=batch)


# Route -> the function that adds it; a task lists the routes it offers (trainers/tasks).
ROUTES: dict[str, Callable[[FastAPI, Backend, ModelCard, ServeSection, list], None]] = {
    "/v1/classify": _add_classify,
    "/v1/tag": _add_tag,
    "/v1/completions": _add_completions,
    CHAT_ROUTE: _add_chat,
}


def _item(req: CompletionRequest | ChatCompletionRequest, prompt: str, *, chat: bool, max_tokens: int | None,
          logprobs: int | None, adapter: str | None, serve: ServeSection) -> GenerationItem:
    if max_tokens is not None and max_tokens > serve.max_new_tokens:
        field = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        raise ApiError(422, "invalid_request", f"{field} {max_tokens} exceeds this server's limit of "
                       f"{serve.max_new_tokens} (serve.max_new_tokens)", param=field)
    for i, s in enumerate(req.stops):
        _check_text(f"stop.{i}", s)
    return GenerationItem(
        prompt, chat, max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p, stop=req.stops, n=req.choices_per_prompt, seed=req.seed,
        logprobs=logprobs, adapter=adapter, limit=serve.max_new_tokens,
    )


async def _generate_all(backend: Backend, items: list[GenerationItem], where: list[str]):
    outs = await asyncio.gather(*(backend.generate(item) for item in items))
    for (gens, _), loc in zip(outs, where, strict=True):
        _raise_if_rejected(gens, loc)
    return outs


def _usage(per_prompt: Sequence[Sequence[Generation]]) -> Usage:
    prompt = sum(gens[0].prompt_tokens for gens in per_prompt if gens)
    completion = sum(g.completion_tokens for gens in per_prompt for g in gens)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _completion_logprobs(gen: Generation, prompt_chars: int) -> CompletionLogprobs | None:
    if gen.logprobs is None:
        return None
    offsets, at = [], prompt_chars
    for s in gen.logprobs:
        offsets.append(at)
        at += len(s.token)
    tops = [dict(s.top) for s in gen.logprobs] if any(s.top for s in gen.logprobs) else None
    return CompletionLogprobs(tokens=[s.token for s in gen.logprobs], token_logprobs=[s.logprob for s in gen.logprobs],
                              top_logprobs=tops, text_offset=offsets)


def _chat_logprobs(gen: Generation) -> ChatLogprobs | None:
    if gen.logprobs is None:
        return None
    return ChatLogprobs(content=[
        TokenLogprob(token=s.token, logprob=s.logprob, bytes=list(s.token.encode("utf-8")),
                     top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=list(t.encode("utf-8"))) for t, lp in s.top])
        for s in gen.logprobs
    ])


def _ignored_header(req: BaseModel) -> dict[str, str]:
    """The ignored keys, comma-separated; a header value is Latin-1 text, so anything else in a key
    is escaped (and the whole stays short)."""
    names = [n.encode("ascii", "backslashreplace").decode() for n in getattr(req, "ignored_fields", [])]
    value = ",".join("".join(ch if 32 < ord(ch) < 127 and ch != "," else f"\\x{ord(ch):02x}" for ch in n)
                     for n in names)
    return {IGNORED_FIELDS_HEADER: value[:1000]} if value else {}


# --- streaming ---------------------------------------------------------------------------------

_END = object()


class _Chunks(Protocol):
    def opening(self, n_choices: int) -> list[BaseModel]: ...
    def delta(self, index: int, text: str) -> BaseModel: ...
    def finish(self, index: int, reason: str) -> BaseModel: ...
    def usage(self, usage: Usage) -> BaseModel: ...


@dataclass(frozen=True)
class _completion_chunks:  # noqa: N801 - used like a function
    id: str
    created: int
    model: str

    def _chunk(self, choices, usage=None) -> CompletionChunk:
        return CompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self, n_choices: int) -> list[BaseModel]:
        return []

    def delta(self, index: int, text: str) -> BaseModel:
        return self._chunk([CompletionChunkChoice(index=index, text=text)])

    def finish(self, index: int, reason: str) -> BaseModel:
        return self._chunk([CompletionChunkChoice(index=index, text="", finish_reason=reason)])

    def usage(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)


@dataclass(frozen=True)
class _chat_chunks:  # noqa: N801
    id: str
    created: int
    model: str

    def _chunk(self, choices, usage=None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self, n_choices: int) -> list[BaseModel]:
        return [self._chunk([ChatChunkChoice(index=j, delta=ChatDelta(role="assistant", content=""))])
                for j in range(n_choices)]

    def delta(self, index: int, text: str) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=text))])

    def finish(self, index: int, reason: str) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)])

    def usage(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)


def _sse(chunk: BaseModel | dict) -> str:
    import json

    data = chunk.model_dump_json() if isinstance(chunk, BaseModel) else json.dumps(chunk)
    return f"data: {data}\n\n"


async def _stream(backend: Backend, items: list[GenerationItem], where: list[str], chunks: _Chunks, *,
                  include_usage: bool, headers: dict[str, str]) -> StreamingResponse:
    """Start the items, wait until each has begun generating (or was refused: then a JSON 4xx,
    not a stream), and answer with a stream of their text as the model thread produces it."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    for k, item in enumerate(items):
        item.sink = lambda event, k=k: loop.call_soon_threadsafe(events.put_nowait, (k, event))
    tasks = [asyncio.create_task(backend.generate(item)) for item in items]
    for k, task in enumerate(tasks):
        task.add_done_callback(lambda t, k=k: (t.cancelled() or t.exception(), events.put_nowait((k, _END))))

    def cancel_all() -> None:
        for item in items:
            item.cancel.set()

    early: list[tuple[int, object]] = []
    begun: set[int] = set()
    ended: set[int] = set()
    try:
        while len(begun | ended) < len(items):
            k, event = await events.get()
            if event is _END:
                ended.add(k)
                if tasks[k].exception() is not None:
                    raise tasks[k].exception()
                _raise_if_rejected(tasks[k].result()[0], where[k])
            elif isinstance(event, Rejected):
                _raise_if_rejected(event, where[k])
            elif event == "start":
                begun.add(k)
            else:
                early.append((k, event))
    except BaseException:
        cancel_all()
        raise
    n = items[0].n

    async def body() -> AsyncIterator[str]:
        backend.stream_opened()
        finished = False
        try:
            for chunk in chunks.opening(n * len(items)):
                yield _sse(chunk)
            for k, (choice, text) in early:
                yield _sse(chunks.delta(k * n + choice, text))
            while len(ended) < len(items):
                k, event = await events.get()
                if event is _END:
                    ended.add(k)
                elif isinstance(event, tuple):
                    choice, text = event
                    yield _sse(chunks.delta(k * n + choice, text))
            outs = [task.result() for task in tasks]
            per_prompt = []
            for k, (gens, _) in enumerate(outs):
                if isinstance(gens, Rejected):  # refused after it began (the model failed on it)
                    raise ApiError(422, gens.kind, f"{where[k]}: {gens.reason}", param=where[k])
                per_prompt.append(gens)
                for j, gen in enumerate(gens):
                    yield _sse(chunks.finish(k * n + j, gen.finish_reason))
            if include_usage:
                yield _sse(chunks.usage(_usage(per_prompt)))
            yield "data: [DONE]\n\n"
            finished = True
        except Exception as err:  # headers are sent: the error travels as an event
            log.exception("a stream failed")
            code, kind, message = (err.code, err.kind, err.message) if isinstance(err, ApiError) else (
                500, "internal_error", "the server failed while streaming; the replica log has the traceback")
            yield _sse({"error": ErrorDetail(message=message, type=kind, code=code).model_dump(exclude_none=True)})
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away (cancelled): stop its rows at the next token
                cancel_all()
            backend.stream_closed()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})


# --- checks ------------------------------------------------------------------------------------


async def _select(backend: Backend, model: str | None) -> Selected:
    if model is not None:
        _check_text("model", model)
    return await backend.select(model)


def _raise_if_rejected(result, loc: str) -> None:
    if isinstance(result, Rejected):
        raise ApiError(422, result.kind, f"{loc}: {result.reason}", param=loc)


def _check_text(loc: str, text: str) -> None:
    """Reject (never replace) text that is not valid Unicode: a lone UTF-16 surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ApiError(
            422, "invalid_text", f"{loc}: character {err.start} is U+{ord(text[err.start]):04X}, a lone UTF-16 "
            "surrogate, which is not a Unicode character; send valid Unicode (a surrogate must be half of a pair)",
            param=loc,
        ) from None


def _check_chars(what: str, text: str, serve: ServeSection) -> None:
    if len(text) > serve.max_chars_per_item:
        raise ApiError(422, "input_too_long", f"{what} has {len(text)} characters; at most "
                       f"{serve.max_chars_per_item} per item (serve.max_chars_per_item)", param=what.split(" ")[0])
    _check_text(what, text)


def _check_inputs(inputs: Sequence[str], serve: ServeSection) -> None:
    if len(inputs) > serve.max_items_per_request:
        raise ApiError(422, "too_many_items", f"inputs has {len(inputs)} items; at most "
                       f"{serve.max_items_per_request} per request (serve.max_items_per_request)", param="inputs")
    for i, text in enumerate(inputs):
        _check_chars(f"inputs.{i}", text, serve)


# --- metrics and errors ------------------------------------------------------------------------


class Measured:
    """Counts every answer by route template and status, and its latency to the last byte. Paths
    that match no route count as 'other' (fuzzers and scanners would grow the series forever)."""

    def __init__(self, app, *, metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def measured(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, measured)
        except asyncio.CancelledError:
            status = 499  # the client closed the connection first
            raise
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.request(route, status, (time.perf_counter() - start) * 1000)


def _not_found(path: str, card: ModelCard) -> str:
    task = task_of_route(path)
    if task is not None and task.name == card.task:  # the chat route of a model without a chat template
        return f"{path}: this model's tokenizer has no chat template; use /v1/completions"
    if task is not None:
        return f"{path} serves {task.name} models; this endpoint serves a {card.task} model: use {', '.join(card.routes)}"
    return f"no route {path}; this endpoint serves {', '.join([*card.routes, '/v1/models', '/healthz', '/docs'])}"


def _loc(loc: Sequence[str | int]) -> str:
    parts = [str(x) for x in loc if x != "body"]
    return ".".join(parts) or "body"


def _install_error_handlers(app: FastAPI, card: ModelCard) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.code == 401 else None
        return error_response(exc.code, exc.kind, exc.message, headers=headers, param=exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            reason = (bad_json.get("ctx") or {}).get("error", "")
            return error_response(400, "invalid_json", f"the request body is not valid JSON: {reason}".rstrip(": "))
        # never echo inputs back: they can be large or private
        fields = [FieldError(loc=_loc(e.get("loc", ())), msg=e.get("msg", "")) for e in errors[:20]]
        message = "; ".join(f"{f.loc}: {f.msg}" for f in fields[:5])
        if len(errors) > 5:
            message += f" (and {len(errors) - 5} more)"
        body = ErrorResponse(error=ErrorDetail(message=message, type="invalid_request", code=422,
                                               param=fields[0].loc if fields else None, fields=fields))
        return JSONResponse(body.model_dump(exclude_none=True), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = route_path(request.scope)
        if exc.status_code == 404:
            return error_response(404, "not_found", _not_found(path, card))
        if exc.status_code == 405:
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {path}",
                                  headers=exc.headers)
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request to %s failed", route_path(request.scope))
        return error_response(500, "internal_error", "the server failed on this request; the replica log has the traceback")
