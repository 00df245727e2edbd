"""The replica's HTTP app without Ray: the real routes and Engine behind a small in-process backend
(the model on a worker thread, as in a replica), driven through httpx's ASGI transport. The same
app runs under Serve in tests/integration/test_serving*.py."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from serving.adapters import ModelIds, UnknownModel
from serving.config import ServeSection
from serving.engine import Engine, GenerationItem, run_isolated
from serving.routes import ApiError, Selected, build_http_app, served_routes
from serving.schemas import IGNORED_FIELDS_HEADER, Health, ModelCard, ReplicaStats
from tests.unit.test_serving_checkpoints import CLS_LABELS, classifier_checkpoint, lm_checkpoint

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class InProcess:
    """The Backend protocol over an Engine, no batching; the model runs on a worker thread."""

    def __init__(self, engine: Engine, app_id: str) -> None:
        self.engine, self.ids = engine, ModelIds(app_id, "base")
        self.streams = 0

    async def select(self, model):
        try:
            adapter = self.ids.adapter_for(model)
        except UnknownModel as err:
            raise ApiError(404, "model_not_found", str(err)) from None
        return Selected(adapter, self.ids.served_id(adapter))

    async def classify(self, text, adapter):
        return (await asyncio.to_thread(run_isolated, self.engine.classify, [text]))[0], 1

    async def tag(self, text, adapter):
        return (await asyncio.to_thread(run_isolated, self.engine.tag, [text]))[0], 1

    async def generate(self, item: GenerationItem):
        return (await asyncio.to_thread(self.engine.generate, [item]))[0], 1

    def stream_opened(self):
        self.streams += 1

    def stream_closed(self):
        self.streams -= 1

    def health(self):
        return Health(task=self.engine.task.name, pid=os.getpid(), replica="unit",
                      stats=ReplicaStats(tokens_generated=0, generations_cancelled=0, streams_open=self.streams,
                                         adapters_loaded=[]))


def _app(checkpoint: Path, app_id: str, **serve):
    engine = Engine.load(checkpoint, ServeSection())
    card = ModelCard(id=app_id, created=1, task=engine.task.name, kind="full", base_model="base",
                     labels=engine.labels, routes=served_routes(engine.task.name, engine.has_chat_template))
    return build_http_app(InProcess(engine, app_id), cards=[card], serve=ServeSection(**serve), token=TOKEN)


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    root = tmp_path_factory.mktemp("routes")
    return {"cls": _app(classifier_checkpoint(root / "cls"), "cls"),
            "lm": _app(lm_checkpoint(root / "lm"), "lm", max_new_tokens=40)}


def _call(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _events(resp: httpx.Response) -> list:
    assert resp.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in resp.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_a_lone_surrogate_is_422_naming_the_item(apps):
    resp = _call(apps["cls"], "POST", "/v1/classify", content=b'{"inputs": ["good", "x\\ud83d"]}',
                 headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_text", "inputs.1") and "U+D83D" in error["message"]
    ok = _call(apps["cls"], "POST", "/v1/classify", json={"inputs": ["good"]})
    assert ok.json()["results"][0][0]["label"] in CLS_LABELS


def test_streamed_completion_is_openai_server_sent_events(apps):
    from openai.types import Completion

    resp = _call(apps["lm"], "POST", "/v1/completions", json={
        "prompt": "repeat : bad", "max_tokens": 3, "temperature": 0, "stream": True, "n": 2,
        "stream_options": {"include_usage": True}, "user": "someone",
    })
    assert resp.status_code == 200 and resp.headers[IGNORED_FIELDS_HEADER] == "user"
    events = _events(resp)
    text = {0: "", 1: ""}
    for e in events[:-3]:  # OpenAI streams text_completion objects whose finish_reason is null until the end
        [choice] = e["choices"]
        assert choice["finish_reason"] is None and set(e) == {"id", "object", "created", "model", "choices", "usage"}
        text[choice["index"]] += choice["text"]
    assert text == {0: "good good good", 1: "good good good"}
    finals = [Completion.model_validate(e) for e in events[-3:]]  # these pass openai's own type
    assert [c.choices[0].finish_reason for c in finals[:2]] == ["length", "length"]
    assert finals[-1].choices == [] and finals[-1].usage.completion_tokens == 6


def test_streamed_chat_opens_with_the_role_and_refusals_come_before_the_stream(apps):
    from openai.types.chat import ChatCompletionChunk

    resp = _call(apps["lm"], "POST", "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "say good"}], "max_tokens": 2, "temperature": 0, "stream": True,
    })
    chunks = [ChatCompletionChunk.model_validate(e) for e in _events(resp)]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "good good"
    assert chunks[-1].choices[0].finish_reason == "length"
    too_long = _call(apps["lm"], "POST", "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "bad " * 130}], "stream": True,
    })
    assert too_long.status_code == 422 and too_long.json()["error"]["type"] == "context_length_exceeded"


def test_bearer_scheme_is_in_the_openapi_document_and_docs_work_offline(apps):
    doc = _call(apps["lm"], "GET", "/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    assert doc["paths"]["/v1/completions"]["post"]["security"] == [{"HTTPBearer": []}]
    page = _call(apps["lm"], "GET", "/docs").text
    assert "cdn" not in page and "/static-offline-docs/swagger-ui-bundle.js" in page
    assert _call(apps["lm"], "GET", "/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    unauthorized = _call(apps["lm"], "GET", "/v1/models", headers={"Authorization": "Bearer nope"})
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["type"] == "unauthorized"
