"""A small HTTP client for a served zerotune model: used to score held-out data through the
real endpoint (the demo, the e2e test) and to show example requests."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from trainers.tasks import get_task

from .config import ServeSection


def classify(url: str, texts: Sequence[str], *, token: str | None = None, batch: int = 32,
             timeout: float = 60.0) -> list[str]:
    """Top label per text from POST {url}/v1/classify, sent `batch` texts per request."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    labels: list[str] = []
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for start in range(0, len(texts), batch):
            r = client.post(f"{url}/v1/classify", json={"inputs": list(texts[start:start + batch])})
            r.raise_for_status()
            labels += [result[0]["label"] for result in r.json()["results"]]
    return labels


def example_request(url: str, task: str, serve: ServeSection | None = None) -> str:
    """A curl line a person can paste to try the endpoint (naming, never showing, the token)."""
    route, body = get_task(task).example_request
    auth = ""
    if serve is not None and serve.auth_token_env:
        auth = f' -H "Authorization: Bearer ${serve.auth_token_env}"'
    elif serve is not None and serve.auth_token_file:
        auth = f' -H "Authorization: Bearer $(cat {serve.auth_token_file})"'
    return f"curl -s -X POST {url}{route} -H 'Content-Type: application/json'{auth} -d '{body}'"
