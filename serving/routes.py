"""The FastAPI app of a replica: typed routes for the checkpoint's task and JSON errors for the rest.

Only the checkpoint's task gets routes, so /docs shows exactly what works; the other task routes
answer 404 with a reason naming the task. Every failure, including Starlette's own (404, 405) and
FastAPI's validation errors, comes back as `ErrorResponse`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from .config import ServeSection
from .engine import Engine, Generation, GenerationItem, Rejected
from .guard import Guard, error_response, route_path
from .schemas import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ClassifyRequest,
    ClassifyResponse,
    CompletionChoice,
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
    Usage,
)

log = logging.getLogger(__name__)

TASK_ROUTES: dict[str, tuple[str, ...]] = {
    "sequence-classification": ("/v1/classify",),
    "token-classification": ("/v1/tag",),
    "causal-lm": ("/v1/completions", "/v1/chat/completions"),
}
_ROUTE_TASK = {route: task for task, routes in TASK_ROUTES.items() for route in routes}
CHAT_ROUTE = "/v1/chat/completions"
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}


def served_routes(task: str, chat: bool) -> list[str]:
    return [r for r in TASK_ROUTES[task] if r != CHAT_ROUTE or chat]


class ApiError(Exception):
    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


class Backend(Protocol):
    """What the routes need from a replica: one call per input; batching happens behind it.
    Each call returns its result and the size of the batch it ran in."""

    engine: Engine

    async def classify(self, text: str) -> tuple[list[float], int]: ...
    async def tag(self, text: str) -> tuple[list[Entity], int]: ...
    async def generate(self, item: GenerationItem) -> tuple[Generation | Rejected, int]: ...
    def health(self) -> Health: ...


def build_http_app(backend: Backend, *, card: ModelCard, serve: ServeSection, token: str | None) -> FastAPI:
    app = FastAPI(
        title=f"zerotune: {card.id}",
        description=f"A {card.task} model served by zerotune. Routes: {', '.join(card.routes)}.",
        version="1",
    )
    _install_error_handlers(app, card)
    labels = card.labels or []

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return backend.health()

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models() -> ModelList:
        return ModelList(data=[card])

    if card.task == "sequence-classification":

        @app.post("/v1/classify", response_model=ClassifyResponse, responses=_ERRORS)
        async def classify(req: ClassifyRequest) -> ClassifyResponse:
            _check_inputs(req.inputs, serve)
            if req.top_k > len(labels):
                raise ApiError(422, "invalid_request", f"top_k {req.top_k} exceeds the model's {len(labels)} labels")
            outs = await asyncio.gather(*(backend.classify(text) for text in req.inputs))
            results = []
            for probs, _ in outs:
                best = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[: req.top_k]
                results.append([LabelScore(label=labels[j], score=probs[j]) for j in best])
            return ClassifyResponse(model=card.id, results=results, batch_size=max(bs for _, bs in outs))

    if card.task == "token-classification":

        @app.post("/v1/tag", response_model=TagResponse, responses=_ERRORS)
        async def tag(req: TagRequest) -> TagResponse:
            _check_inputs(req.inputs, serve)
            outs = await asyncio.gather(*(backend.tag(text) for text in req.inputs))
            return TagResponse(model=card.id, results=[e for e, _ in outs], batch_size=max(bs for _, bs in outs))

    if "/v1/completions" in card.routes:

        @app.post("/v1/completions", response_model=CompletionResponse, responses=_ERRORS)
        async def completions(req: CompletionRequest) -> CompletionResponse:
            _check_chars("prompt", req.prompt, serve)
            gen, batch = await _generate(backend, req, req.prompt, chat=False, card=card, serve=serve)
            return CompletionResponse(
                id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=card.id, usage=_usage(gen),
                choices=[CompletionChoice(index=0, text=gen.text, finish_reason=gen.finish_reason)], batch_size=batch,
            )

    if CHAT_ROUTE in card.routes:

        @app.post(CHAT_ROUTE, response_model=ChatCompletionResponse, responses=_ERRORS)
        async def chat(req: ChatCompletionRequest) -> ChatCompletionResponse:
            if len(req.messages) > serve.max_items_per_request:
                raise ApiError(422, "too_many_items", f"messages has {len(req.messages)} items; at most "
                               f"{serve.max_items_per_request} per request (serve.max_items_per_request)")
            _check_chars("messages (all contents together)", "".join(m.content for m in req.messages), serve)
            try:
                prompt = backend.engine.render_chat([m.model_dump() for m in req.messages])
            except Exception as err:  # the template itself may refuse a conversation (jinja raise_exception)
                raise ApiError(422, "invalid_request", f"the chat template rejected these messages: {err}") from None
            gen, batch = await _generate(backend, req, prompt, chat=True, card=card, serve=serve)
            message = ChatMessage(role="assistant", content=gen.text)
            return ChatCompletionResponse(
                id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=card.id, usage=_usage(gen),
                choices=[ChatChoice(index=0, message=message, finish_reason=gen.finish_reason)], batch_size=batch,
            )

    app.add_middleware(Guard, token=token, max_body_bytes=serve.max_body_bytes)
    return app


def _check_chars(what: str, text: str, serve: ServeSection) -> None:
    if len(text) > serve.max_chars_per_item:
        raise ApiError(422, "input_too_long", f"{what} has {len(text)} characters; at most "
                       f"{serve.max_chars_per_item} per item (serve.max_chars_per_item)")


def _check_inputs(inputs: Sequence[str], serve: ServeSection) -> None:
    if len(inputs) > serve.max_items_per_request:
        raise ApiError(422, "too_many_items", f"inputs has {len(inputs)} items; at most "
                       f"{serve.max_items_per_request} per request (serve.max_items_per_request)")
    for i, text in enumerate(inputs):
        _check_chars(f"inputs.{i}", text, serve)


async def _generate(
    backend: Backend, req: CompletionRequest | ChatCompletionRequest, prompt: str, *, chat: bool,
    card: ModelCard, serve: ServeSection,
) -> tuple[Generation, int]:
    if req.model is not None and req.model != card.id:
        raise ApiError(404, "model_not_found", f"model {req.model!r} is not served here; this endpoint serves {card.id!r}")
    if req.max_tokens > serve.max_new_tokens:
        raise ApiError(422, "invalid_request", f"max_tokens {req.max_tokens} exceeds this server's limit of "
                       f"{serve.max_new_tokens} (serve.max_new_tokens)")
    item = GenerationItem(prompt, chat, req.max_tokens, req.temperature, req.top_p, req.stops)
    gen, batch = await backend.generate(item)
    if isinstance(gen, Rejected):
        raise ApiError(422, "context_length_exceeded", gen.reason)
    return gen, batch


def _usage(gen: Generation) -> Usage:
    return Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                 total_tokens=gen.prompt_tokens + gen.completion_tokens)


def _not_found(path: str, card: ModelCard) -> str:
    task = _ROUTE_TASK.get(path)
    if task == card.task:  # the chat route of a model whose tokenizer has no chat template
        return f"{path}: this model's tokenizer has no chat template; use /v1/completions"
    if task is not None:
        return f"{path} serves {task} models; this endpoint serves a {card.task} model: use {', '.join(card.routes)}"
    return f"no route {path}; this endpoint serves {', '.join([*card.routes, '/v1/models', '/healthz', '/docs'])}"


def _loc(loc: Sequence[str | int]) -> str:
    parts = [str(x) for x in loc if x != "body"]
    return ".".join(parts) or "body"


def _install_error_handlers(app: FastAPI, card: ModelCard) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.kind, exc.message)

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
        body = ErrorResponse(error=ErrorDetail(message=message, type="invalid_request", code=422, fields=fields))
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
