"""serving.proxy: the middleware Serve's proxy runs, turning Serve's own plain-text errors (503
under backpressure, 404 for an unknown app path, 500 when a replica died) into zerotune's JSON error
body, and leaving replica answers alone. Under a real Serve proxy: tests/integration/test_serving.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from serving.proxy import CALLBACK, CALLBACK_ENV, ProxyErrors, controller_env, proxy_middlewares
from serving.schemas import ErrorResponse


async def _backpressure(request):
    return PlainTextResponse("Request dropped due to backpressure (num_queued_requests=1, max_queued_requests=1).",
                             status_code=503, headers={"Retry-After": "1"})


async def _json_error(request):
    return JSONResponse({"error": {"message": "m", "type": "t", "code": 422}}, status_code=422)


async def _stream(request):
    async def body():
        yield b"data: 1\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _replica_died(scope, receive, send):
    raise RuntimeError("ActorDiedError")  # what Serve's proxy does: no response, an exception


def _get(path: str) -> httpx.Response:
    app = ProxyErrors(Starlette(routes=[Route("/busy", _backpressure), Route("/json", _json_error),
                                        Route("/stream", _stream)]))
    if path == "/died":
        app = ProxyErrors(_replica_died)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_backpressure_503_becomes_the_json_error_body_and_keeps_retry_after():
    resp = _get("/busy")
    assert resp.status_code == 503 and resp.headers["content-type"] == "application/json"
    assert resp.headers["retry-after"] == "1" and int(resp.headers["content-length"]) == len(resp.content)
    error = ErrorResponse.model_validate(resp.json()).error
    assert (error.code, error.type) == (503, "overloaded") and "max_queued_requests=1" in error.message


@pytest.mark.parametrize(("path", "code", "kind"), [("/nothing", 404, "not_found")])
def test_other_plain_errors_too(path, code, kind):
    error = ErrorResponse.model_validate(_get(path).json()).error
    assert (error.code, error.type) == (code, kind)


def test_a_request_serve_leaves_unanswered_gets_a_json_500():
    resp = _get("/died")
    assert resp.status_code == 500 and ErrorResponse.model_validate(resp.json()).error.type == "internal_error"


def test_replica_answers_pass_through_untouched():
    assert _get("/json").json() == {"error": {"message": "m", "type": "t", "code": 422}}
    resp = _get("/stream")
    assert resp.status_code == 200 and resp.text == "data: 1\n\ndata: [DONE]\n\n"


def test_serve_is_told_where_the_callback_is():
    assert controller_env() == {"runtime_env": {"env_vars": {CALLBACK_ENV: CALLBACK}}}
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    assert validate_http_proxy_callback_return(proxy_middlewares())[0].cls is ProxyErrors
