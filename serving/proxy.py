"""zerotune's JSON error body on the errors Ray Serve's HTTP proxy answers itself.

Serve's proxy answers some requests without any replica: 503 (or 429) when `max_queued_requests`
is full (backpressure), 404 for a path no app serves, 408 when `request_timeout_s` runs out, 500
when a replica dies mid-request. It writes those as text/plain. Serve runs the Starlette
middlewares that `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names inside every proxy, so
`serving.app.start` (and the config `serve_config` writes) sets it, through the Serve
controller's environment, to `proxy_middlewares` below: `ProxyErrors` rewrites any non-JSON
error answer into `ErrorResponse` (keeping its status and headers such as Retry-After), answers a
JSON 500 where Serve would leave the request to uvicorn's plain-text 500 (a replica that died
mid-request), and counts backpressure rejections as a metric.

It only takes effect when Serve starts (HTTP options and the controller's environment are fixed
then): on a cluster where Serve already runs, restart it (`serve shutdown`) or set
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serving.proxy:proxy_middlewares before `ray start`.
"""

from __future__ import annotations

import json
from typing import Any

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serving.proxy:proxy_middlewares"

_KINDS = {
    404: ("not_found", "no application serves this path"),
    408: ("timeout", "the request took longer than Serve's request_timeout_s"),
    429: ("overloaded", "the server is at capacity; retry after a moment"),
    500: ("internal_error", "the request failed inside Serve (a replica may have died); retry it"),
    502: ("bad_gateway", "no replica could answer; retry it"),
    503: ("overloaded", "the server is at capacity (serve.max_queued_requests are already waiting) or has no "
          "replica ready; retry after a moment"),
    504: ("timeout", "no replica answered in time"),
}


def controller_env() -> dict[str, Any]:
    """`serve.start(controller_options=...)`: the controller's environment, inherited by the proxies."""
    return {"runtime_env": {"env_vars": {CALLBACK_ENV: CALLBACK}}}


def proxy_middlewares() -> list:
    """Called once in each Serve proxy process (Serve's HTTP proxy callback)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyErrors)]


def _rejections_counter():
    try:
        from ray.util.metrics import Counter

        return Counter("zerotune_queue_rejections", description="Requests Serve's proxy refused because "
                       "max_queued_requests were already waiting (backpressure), by status.", tag_keys=("status",))
    except Exception:  # no Ray in this process (a unit test)
        return None


def error_body(status: int, original: bytes) -> bytes:
    kind, meaning = _KINDS.get(status, ("http_error", "the request could not be served"))
    said = original.decode("utf-8", "replace").strip()[:300]
    message = f"{meaning} (Ray Serve: {said})" if said else meaning
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


class ProxyErrors:
    """Rewrites the proxy's own (non-JSON) 4xx/5xx answers into zerotune's error body. Answers that
    come from a replica are JSON (errors) or pass through untouched (everything else)."""

    def __init__(self, app) -> None:
        self.app = app
        self._rejections = _rejections_counter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state: dict[str, Any] = {"start": None, "chunks": [], "started": False}

        async def rewrite(message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                headers = [(k, v) for k, v in message.get("headers", [])]
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"").lower()
                if message["status"] >= 400 and b"json" not in ctype:
                    state["start"] = {**message, "headers": headers}
                    return
                return await send(message)
            if message["type"] == "http.response.body" and state["start"] is not None:
                state["chunks"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start = state["start"]
                status = start["status"]
                body = error_body(status, b"".join(state["chunks"]))
                keep = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length")]
                headers = [*keep, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                if status in (429, 503) and self._rejections is not None:
                    self._rejections.inc(tags={"status": str(status)})
                await send({**start, "headers": headers})
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            return await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            if state["started"]:
                raise
        if not state["started"]:
            # Serve answered nothing (a replica died mid-request: Serve sends only 408/429/503 itself and
            # leaves the rest to uvicorn's plain-text 500)
            body = error_body(500, b"the replica handling this request failed")
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
