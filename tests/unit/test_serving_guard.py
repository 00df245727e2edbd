"""The request guard in front of the routes (bearer token, content type, body size, UTF-8), run
against a small echo app through httpx's ASGI transport, and where the token comes from."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.config import ServeSection
from serving.guard import Guard, read_token
from trainers.errors import UserError

TOKEN = "s3cret-token"
LIMIT = 2048


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"length": len(body), "path": request.url.path})


def _app(token: str | None = TOKEN) -> Guard:
    routes = [Route(p, _echo, methods=["GET", "POST"]) for p in ("/v1/echo", "/healthz")]
    return Guard(Starlette(routes=routes), token=token, max_body_bytes=LIMIT)


def _send(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


def _error(resp: httpx.Response, code: int, kind: str) -> str:
    assert resp.status_code == code, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["type"]) == (code, kind)
    return error["message"]


def test_valid_request_reaches_the_app_with_its_body_intact():
    body = json.dumps({"inputs": ["héllo"]}).encode()
    resp = _send(_app(), "POST", "/v1/echo", content=body, headers={**AUTH, **JSON})
    assert resp.status_code == 200 and resp.json()["length"] == len(body)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}]
)
def test_missing_or_wrong_token_is_401_and_never_echoed(headers):
    resp = _send(_app(), "POST", "/v1/echo", content=b"{}", headers={**headers, **JSON})
    message = _error(resp, 401, "unauthorized")
    assert TOKEN not in resp.text and "Bearer" in message
    assert resp.headers["www-authenticate"] == "Bearer"


def test_health_is_open_and_no_token_means_open():
    assert _send(_app(), "GET", "/healthz").status_code == 200
    assert _send(_app(token=None), "POST", "/v1/echo", content=b"{}", headers=JSON).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_non_json_bodies_are_415(content_type):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    _error(_send(_app(), "POST", "/v1/echo", content=b"{}", headers=headers), 415, "unsupported_media_type")


def test_json_variants_are_accepted():
    for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert _send(_app(), "POST", "/v1/echo", content=b"{}", headers={**AUTH, "Content-Type": ctype}).status_code == 200


def test_declared_length_over_the_limit_is_413_without_reading():
    resp = _send(_app(), "POST", "/v1/echo", content=b"x" * (LIMIT + 1), headers={**AUTH, **JSON})
    assert "serve.max_body_bytes" in _error(resp, 413, "payload_too_large")


def test_streamed_body_over_the_limit_is_413():
    async def chunks():
        for _ in range(10):
            yield b"x" * 512  # no Content-Length: counted as it arrives

    resp = _send(_app(), "POST", "/v1/echo", content=chunks(), headers={**AUTH, **JSON})
    _error(resp, 413, "payload_too_large")


def test_streamed_body_under_the_limit_passes():
    async def chunks():
        for _ in range(3):
            yield b"x" * 512

    resp = _send(_app(), "POST", "/v1/echo", content=chunks(), headers={**AUTH, **JSON})
    assert resp.status_code == 200 and resp.json()["length"] == 1536


def test_invalid_utf8_is_400():
    resp = _send(_app(), "POST", "/v1/echo", content=b'{"inputs": ["\xff\xfe"]}', headers={**AUTH, **JSON})
    assert "UTF-8" in _error(resp, 400, "invalid_encoding")


def test_bad_content_length_is_400():
    resp = _send(_app(), "POST", "/v1/echo", content=b"{}", headers={**AUTH, **JSON, "Content-Length": "-5"})
    _error(resp, 400, "invalid_request")


def test_token_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ZT_TEST_TOKEN", "  from-env\n")
    assert read_token(ServeSection(auth_token_env="ZT_TEST_TOKEN")) == "from-env"
    (tmp_path / "tok").write_text("from-file\n")
    assert read_token(ServeSection(auth_token_file=str(tmp_path / "tok"))) == "from-file"
    assert read_token(ServeSection()) is None


def test_token_problems_name_the_source_not_the_token(tmp_path, monkeypatch):
    monkeypatch.delenv("ZT_MISSING", raising=False)
    with pytest.raises(UserError, match="ZT_MISSING"):
        read_token(ServeSection(auth_token_env="ZT_MISSING"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        read_token(ServeSection(auth_token_file=str(tmp_path / "empty")))
    with pytest.raises(UserError, match="could not be read"):
        read_token(ServeSection(auth_token_file=str(tmp_path / "absent")))
    with pytest.raises(ValueError, match="not both"):
        ServeSection(auth_token_env="A", auth_token_file="/b")
