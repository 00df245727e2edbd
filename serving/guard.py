"""What a request must pass before any route sees it: bearer token, JSON content type, body size
and UTF-8. A plain ASGI middleware, so it counts the bytes that actually arrive (a lying or missing
Content-Length and chunked bodies included) and stops reading at the limit.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse

from trainers.errors import UserError

from .config import ServeSection
from .schemas import ErrorDetail, ErrorResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1/"  # health and docs stay open for load balancers and humans
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def read_token(serve: ServeSection) -> str | None:
    """The bearer token the endpoint requires, or None. Error messages name where it was looked
    for, never what it is."""
    if serve.auth_token_env:
        token = os.environ.get(serve.auth_token_env, "").strip()
        if not token:
            raise UserError(
                f"serve.auth_token_env is {serve.auth_token_env!r} but that environment variable is unset or "
                "empty in the replica's process. Set it in every node's environment before Ray starts (secrets never "
                "go in the spec)."
            )
        return token
    if serve.auth_token_file:
        path = Path(serve.auth_token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"serve.auth_token_file {str(path)!r} could not be read: {type(err).__name__}") from None
        if not token:
            raise UserError(f"serve.auth_token_file {str(path)!r} is empty")
        return token
    return None


def error_response(code: int, kind: str, message: str, headers: dict[str, str] | None = None,
                   param: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, code=code, param=param))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=code, headers=headers)


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries the bearer token; compare_digest takes the same time
    wherever the first difference is."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def route_path(scope: Scope) -> str:
    """The path inside the app: Serve passes its route_prefix as root_path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


class _TooLarge(Exception):
    pass


class Guard:
    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app, self._token, self.max_body_bytes = app, token or None, max_body_bytes

    def _authorized(self, scope: Scope) -> bool:
        return token_matches(_header(scope, b"authorization"), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._token and route_path(scope).startswith(PROTECTED_PREFIX) and not self._authorized(scope):
            reply = error_response(
                401, "unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
            return await reply(scope, receive, send)
        if scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        reply = self._check_headers(scope)
        if reply is not None:
            return await reply(scope, receive, send)
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            return await self._too_large()(scope, receive, send)
        if body is None:  # the client went away mid-body; nobody to answer
            return None
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            reply = error_response(400, "invalid_encoding", f"the request body is not valid UTF-8 ({err.reason} at byte {err.start})")
            return await reply(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> JSONResponse:
        return error_response(
            413, "payload_too_large", f"the request body exceeds {self.max_body_bytes} bytes (serve.max_body_bytes)"
        )

    def _check_headers(self, scope: Scope) -> JSONResponse | None:
        content_type = _header(scope, b"content-type")
        if not _is_json(content_type):
            return error_response(
                415, "unsupported_media_type", f"send the body as JSON with 'Content-Type: application/json'; "
                f"got {content_type!r}"[:300],
            )
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return error_response(400, "invalid_request", f"Content-Length {length!r} is not a number"[:200])
            if int(length) > self.max_body_bytes:
                return self._too_large()
        return None

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the already-read body once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            try:
                return await receive()
            except Exception:  # Serve raises (TaskCancelledError) once the client has gone: that is a disconnect
                return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
