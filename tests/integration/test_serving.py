"""Ray Serve end to end on tiny checkpoints: every task's route, dynamic batching, a bearer token,
bad requests that never take the replica down, backpressure, and a few hundred concurrent clients.

One Serve instance on a free loopback port holds one app per checkpoint for the whole module.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serving.config import ServeSection
from serving.schemas import (
    ChatCompletionResponse,
    ClassifyResponse,
    CompletionResponse,
    ModelList,
    TagResponse,
)
from tests.net import free_port
from tests.unit.test_serving_checkpoints import (
    CLS_LABELS,
    classifier_checkpoint,
    lm_checkpoint,
    tagger_checkpoint,
)

pytestmark = pytest.mark.integration

TOKEN = "integration-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_CHARS = 500
CLS_BATCH = 8
LM_MAX_NEW = 40




@pytest.fixture(scope="module")
def urls(ray_cluster, tmp_path_factory):
    from ray import serve
    from ray.serve import RunTarget

    from serving.app import build_app, start

    root = tmp_path_factory.mktemp("serving")
    (root / "token").write_text(TOKEN + "\n")
    port = free_port()
    small = {"port": port, "num_cpus_per_replica": 0.2}
    specs = {
        "adapter": ServeSection(**small, app_name="adapter", route_prefix="/adapter"),
        "ner": ServeSection(**small, app_name="ner", route_prefix="/ner"),
        "lm": ServeSection(**small, app_name="lm", route_prefix="/lm", max_new_tokens=LM_MAX_NEW),
        # one request at a time and one queued: the rest must be turned away at once
        "busy": ServeSection(**small, app_name="busy", route_prefix="/busy", max_ongoing_requests=1,
                             max_queued_requests=1, max_batch_size=1),
    }
    checkpoints = {
        "adapter": classifier_checkpoint(root / "adapter", favour="neg", adapter=True),
        "ner": tagger_checkpoint(root / "ner"),
        "lm": lm_checkpoint(root / "lm"),
    }
    checkpoints["busy"] = checkpoints["lm"]
    try:
        # the main app goes through the public entry point the CLI uses
        cls_url = start(classifier_checkpoint(root / "cls"), ServeSection(
            **small, app_name="cls", route_prefix="/cls", auth_token_file=str(root / "token"),
            max_batch_size=CLS_BATCH, max_chars_per_item=MAX_CHARS, max_queued_requests=-1,
        ))
        # the rest start side by side (same build_app path, one wait)
        serve.run_many([
            RunTarget(build_app({"checkpoint": str(checkpoints[name]), "serve": spec.model_dump()}),
                      name=spec.app_name, route_prefix=spec.route_prefix)
            for name, spec in specs.items()
        ])
        yield {"cls": cls_url, **{name: f"http://127.0.0.1:{port}{spec.route_prefix}" for name, spec in specs.items()}}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=60) as client:
        yield client


def _error(resp: httpx.Response, code: int) -> dict:
    assert resp.status_code == code, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def _pid(http, url: str) -> int:
    resp = http.get(f"{url}/healthz")
    assert resp.status_code == 200
    return resp.json()["pid"]


# --- each task answers with typed results -------------------------------------------------------


def test_start_returns_the_app_url_and_the_model_card(urls, http):
    assert urls["cls"].startswith("http://127.0.0.1:") and urls["cls"].endswith("/cls")
    models = ModelList.model_validate(http.get(f"{urls['cls']}/v1/models", headers=AUTH).json())
    [card] = models.data
    assert (card.id, card.task, card.kind, card.labels, card.routes) == (
        "cls", "sequence-classification", "full", CLS_LABELS, ["/v1/classify"],
    )


def test_classify_ranks_the_checkpoints_labels(urls, http):
    resp = http.post(f"{urls['cls']}/v1/classify", json={"inputs": ["good day", "bad 🙂 food"], "top_k": 2},
                     headers=AUTH)
    body = ClassifyResponse.model_validate(resp.json())
    assert resp.status_code == 200 and body.model == "cls"
    for ranked in body.results:
        assert [r.label for r in ranked] == ["pos", "neg"]  # the head favours "pos"
        assert ranked[0].score > 0.99 and sum(r.score for r in ranked) == pytest.approx(1.0)


def test_one_request_with_many_inputs_fills_batches(urls, http):
    resp = http.post(f"{urls['cls']}/v1/classify", json={"inputs": ["good"] * 20}, headers=AUTH)
    body = ClassifyResponse.model_validate(resp.json())
    assert len(body.results) == 20 and [len(r) for r in body.results] == [1] * 20
    assert body.batch_size == CLS_BATCH  # 20 inputs arrive together: 8 + 8 + 4


def test_adapter_checkpoint_serves_the_adapters_head(urls, http):
    card = http.get(f"{urls['adapter']}/v1/models").json()["data"][0]
    assert (card["kind"], card["labels"]) == ("adapter", CLS_LABELS)
    body = ClassifyResponse.model_validate(
        http.post(f"{urls['adapter']}/v1/classify", json={"inputs": ["good good"]}).json()
    )
    [[top]] = body.results
    assert top.label == "neg" and top.score > 0.99  # the base's own head is random


def test_tag_returns_word_entities_with_offsets(urls, http):
    text = "Alice visited  Paris"
    body = TagResponse.model_validate(http.post(f"{urls['ner']}/v1/tag", json={"inputs": [text, "bob"]}).json())
    assert [(e.type, e.text, e.start, e.end) for e in body.results[0]] == [
        ("PER", "Alice", 0, 5), ("PER", "visited", 6, 13), ("PER", "Paris", 15, 20),
    ]
    assert [e.text for e in body.results[1]] == ["bob"]


def test_completions_length_stop_and_usage(urls, http):
    url = f"{urls['lm']}/v1/completions"
    body = CompletionResponse.model_validate(
        http.post(url, json={"prompt": "repeat : bad", "max_tokens": 4, "temperature": 0}).json()
    )
    [choice] = body.choices
    assert (choice.text, choice.finish_reason, body.object, body.model) == (
        "good good good good", "length", "text_completion", "lm",
    )
    assert body.usage.completion_tokens == 4 and body.usage.total_tokens == body.usage.prompt_tokens + 4
    stopped = http.post(url, json={"prompt": "repeat : bad", "max_tokens": 8, "temperature": 0, "stop": " good"}).json()
    assert (stopped["choices"][0]["text"], stopped["choices"][0]["finish_reason"]) == ("good", "stop")
    sampled = http.post(url, json={"prompt": "hi", "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "model": "lm"})
    assert sampled.status_code == 200 and sampled.json()["usage"]["completion_tokens"] <= 3


def test_chat_completions_use_the_chat_template(urls, http):
    resp = http.post(f"{urls['lm']}/v1/chat/completions", json={
        "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "say good"}],
        "max_tokens": 2, "temperature": 0,
    })
    body = ChatCompletionResponse.model_validate(resp.json())
    assert body.object == "chat.completion"
    assert (body.choices[0].message.role, body.choices[0].message.content) == ("assistant", "good good")


def test_generation_limits_are_422(urls, http):
    url = f"{urls['lm']}/v1/completions"
    over = _error(http.post(url, json={"prompt": "a", "max_tokens": LM_MAX_NEW + 1}), 422)
    assert "serve.max_new_tokens" in over["message"]
    context = _error(http.post(url, json={"prompt": "bad " * 100, "max_tokens": LM_MAX_NEW}), 422)
    assert context["type"] == "context_length_exceeded" and "128 tokens" in context["message"]
    assert _error(http.post(url, json={"prompt": "a", "stream": "yes"}), 422)["fields"][0]["loc"] == "stream"
    assert _error(http.post(url, json={"prompt": "a", "presence_penalty": 1}), 422)["param"] == "presence_penalty"
    wrong_model = _error(http.post(url, json={"prompt": "a", "model": "gpt-4"}), 404)
    assert "'lm'" in wrong_model["message"]


def test_concurrent_generations_share_a_batch(urls):
    async def go():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{urls['lm']}/v1/completions", json={"prompt": "repeat : bad", "max_tokens": 8,
                                                                   "temperature": 0})
                for _ in range(12)
            ))

    bodies = [CompletionResponse.model_validate(r.json()) for r in asyncio.run(go())]
    assert {b.choices[0].text for b in bodies} == {"good " * 7 + "good"}
    assert max(b.batch_size for b in bodies) > 1


def test_other_tasks_routes_are_404_naming_the_task(urls, http):
    on_lm = _error(http.post(f"{urls['lm']}/v1/classify", json={"inputs": ["a"]}), 404)
    assert "causal-lm" in on_lm["message"] and "/v1/completions" in on_lm["message"]
    on_ner = _error(http.post(f"{urls['ner']}/v1/completions", json={"prompt": "a"}), 404)
    assert "token-classification" in on_ner["message"] and "/v1/tag" in on_ner["message"]
    assert "/v1/classify" in _error(http.get(f"{urls['cls']}/nothing/here"), 404)["message"]


def test_openapi_documents_only_the_served_routes(urls, http):
    paths = set(http.get(f"{urls['ner']}/openapi.json").json()["paths"])
    assert paths == {"/v1/tag", "/v1/models", "/v1/models/{model_id}", "/healthz"}
    docs = http.get(f"{urls['ner']}/docs")
    assert docs.status_code == 200 and "/ner/static-offline-docs/swagger-ui-bundle.js" in docs.text  # no CDN
    assert http.get(f"{urls['ner']}/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_health_check_runs_the_model(urls):
    from ray import serve

    handle = serve.get_app_handle("ner")
    assert handle.check_health.remote().result(timeout_s=60) is None


# --- bad requests: 4xx with a JSON reason, and the replica lives on ------------------------------

_JSON = {"Content-Type": "application/json"}


def _streamed(total: int):
    def chunks():
        for _ in range(total // 65536):
            yield b"x" * 65536

    return chunks()


BAD_REQUESTS = {
    "malformed json": (dict(content=b'{"inputs": ["a"', headers=_JSON), 400, "invalid_json"),
    "deeply nested json": (dict(content=b"[" * 100_000, headers=_JSON), 400, None),
    "json null": (dict(content=b"null", headers=_JSON), 422, "invalid_request"),
    "json array": (dict(json=["a", "b"]), 422, "invalid_request"),
    "empty body": (dict(content=b"", headers=_JSON), 422, "invalid_request"),
    "inputs not a list": (dict(json={"inputs": "a"}), 422, "invalid_request"),
    "wrong item types": (dict(json={"inputs": [1, None]}), 422, "invalid_request"),
    "top_k as a string": (dict(json={"inputs": ["a"], "top_k": "2"}), 422, "invalid_request"),
    "top_k NaN": (dict(content=b'{"inputs": ["a"], "top_k": NaN}', headers=_JSON), 422, "invalid_request"),
    "top_k beyond labels": (dict(json={"inputs": ["a"], "top_k": 10**30}), 422, "invalid_request"),
    "missing field": (dict(json={}), 422, "invalid_request"),
    "unknown field": (dict(json={"inputs": ["a"], "extra": 1}), 422, "invalid_request"),
    "empty list": (dict(json={"inputs": []}), 422, "invalid_request"),
    "10,000 items": (dict(json={"inputs": ["a"] * 10_000}), 422, "too_many_items"),
    "item over max chars": (dict(json={"inputs": ["a" * (MAX_CHARS + 1)]}), 422, "input_too_long"),
    "5 MB string": (dict(json={"inputs": ["a" * 5_000_000]}), 413, "payload_too_large"),
    "5 MB streamed body": (dict(content=_streamed(5_000_000), headers=_JSON), 413, "payload_too_large"),
    "invalid utf-8": (dict(content=b'{"inputs": ["\xc3\x28 \xff"]}', headers=_JSON), 400, "invalid_encoding"),
    "text/plain": (dict(content=b'{"inputs": ["a"]}', headers={"Content-Type": "text/plain"}), 415, None),
    "form body": (dict(data={"inputs": "a"}), 415, "unsupported_media_type"),
    "no token": (dict(json={"inputs": ["a"]}, auth={}), 401, "unauthorized"),
    "wrong token": (dict(json={"inputs": ["a"]}, auth={"Authorization": "Bearer nope"}), 401, "unauthorized"),
    "token in wrong scheme": (dict(json={"inputs": ["a"]}, auth={"Authorization": f"Basic {TOKEN}"}), 401, None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_4xx_json_and_replica_survives(urls, http, case):
    kwargs, code, kind = BAD_REQUESTS[case]
    kwargs = dict(kwargs)
    headers = {**kwargs.pop("auth", AUTH), **kwargs.pop("headers", {})}
    pid = _pid(http, urls["cls"])
    resp = http.post(f"{urls['cls']}/v1/classify", headers=headers, **kwargs)
    error = _error(resp, code)
    if kind:
        assert error["type"] == kind
    assert TOKEN not in resp.text and len(resp.content) < 10_000  # no echo of the token or the input
    assert _pid(http, urls["cls"]) == pid
    ok = http.post(f"{urls['cls']}/v1/classify", json={"inputs": ["good"]}, headers=AUTH)
    assert ok.status_code == 200


def test_wrong_method_is_405_json(urls, http):
    assert _error(http.get(f"{urls['cls']}/v1/classify", headers=AUTH), 405)["type"] == "method_not_allowed"


# --- load --------------------------------------------------------------------------------------


def test_300_concurrent_clients_all_succeed_and_share_batches(urls, http):
    pid = _pid(http, urls["cls"])
    texts = [f"{w} day {i}" for i, w in enumerate(["good", "bad", "fun", "sad"] * 75)]

    async def go():
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(timeout=180, limits=limits, headers=AUTH) as client:
            return await asyncio.gather(*(client.post(f"{urls['cls']}/v1/classify", json={"inputs": [t]})
                                          for t in texts))

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 300
    bodies = [ClassifyResponse.model_validate(r.json()) for r in responses]
    assert all(b.results[0][0].label == "pos" for b in bodies)
    assert max(b.batch_size for b in bodies) > 1  # requests from different clients shared forward passes
    assert _pid(http, urls["cls"]) == pid


def test_overload_is_503_at_once_not_a_hang_with_the_json_error_body(urls):
    """One request runs, one waits, the rest are refused by Serve's proxy (max_queued_requests),
    which answers them itself: serving.proxy turns its text into zerotune's error body."""

    async def go():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{urls['busy']}/v1/completions", json={"prompt": "a", "max_tokens": 100, "temperature": 0})
                for _ in range(10)
            ))

    responses = asyncio.run(go())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 1, codes
    for resp in responses:
        if resp.status_code == 503:
            error = _error(resp, 503)
            assert error["type"] == "overloaded" and "max_queued_requests" in error["message"]


def test_serves_own_404_for_a_path_no_app_serves_is_json(urls, http):
    base = urls["cls"].rsplit("/", 1)[0]
    assert _error(http.get(f"{base}/no-such-app/v1/models"), 404)["type"] == "not_found"


def test_one_poisoned_input_among_concurrent_clients_fails_alone(urls, http):
    """A lone surrogate is valid JSON but not text: 422 naming the item for its request, the normal
    answer for every other request, whatever batch they shared."""
    pid = _pid(http, urls["cls"])
    bodies = [{"inputs": [f"good day {i}"]} for i in range(40)]
    poisoned = {5: b'{"inputs": ["good", "x\\ud83d"]}', 17: b'{"inputs": ["\\ud800"]}'}

    async def go():
        async with httpx.AsyncClient(timeout=120, headers={**AUTH, **_JSON}) as client:
            return await asyncio.gather(*(
                client.post(f"{urls['cls']}/v1/classify", content=poisoned.get(i) or json.dumps(body).encode())
                for i, body in enumerate(bodies)
            ))

    responses = asyncio.run(go())
    for i, resp in enumerate(responses):
        if i in poisoned:
            error = _error(resp, 422)
            assert error["type"] == "invalid_text" and error["param"] == ("inputs.1" if i == 5 else "inputs.0")
        else:
            assert resp.status_code == 200, (i, resp.text[:300])
            assert ClassifyResponse.model_validate(resp.json()).results[0][0].label == "pos"
    assert max(r.json()["batch_size"] for r in responses if r.status_code == 200) > 1
    assert _pid(http, urls["cls"]) == pid


def test_error_bodies_parse_as_json_everywhere(urls, http):
    """A spot check that even Starlette's own errors use the error envelope."""
    for resp in (http.get(f"{urls['lm']}/v1/tag"), http.post(f"{urls['lm']}/v1/completions", content=b"{")):
        assert set(json.loads(resp.text)) == {"error"}


def test_deleting_an_app_drains_the_requests_it_has_taken(urls, tmp_path):
    """`zerotune serve` stops with serve.delete (Ctrl-C): requests already taken finish with 200."""
    from ray import serve

    from serving.app import build_app

    port = int(httpx.URL(urls["lm"]).port)
    spec = ServeSection(port=port, num_cpus_per_replica=0.2, app_name="drain", route_prefix="/drain",
                        max_new_tokens=LM_MAX_NEW, max_batch_size=1, max_ongoing_requests=32,
                        graceful_shutdown_timeout_s=60)
    serve.run(build_app({"checkpoint": str(lm_checkpoint(tmp_path / "lm")), "serve": spec.model_dump()}),
              name="drain", route_prefix="/drain")
    url = f"http://127.0.0.1:{port}/drain/v1/completions"
    n = 16

    async def go():
        async with httpx.AsyncClient(timeout=120) as client:
            pending = [asyncio.create_task(client.post(url, json={"prompt": "repeat : bad", "max_tokens": LM_MAX_NEW,
                                                                  "temperature": 0})) for _ in range(n)]
            # Once one has come back the replica holds the rest (one at a time: max_batch_size 1).
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finished_before_delete = sum(t.done() for t in pending)
            await asyncio.to_thread(serve.delete, "drain")
            return finished_before_delete, await asyncio.gather(*pending)

    finished_before_delete, responses = asyncio.run(go())
    assert finished_before_delete < n  # the deletion really overlapped requests in flight
    assert [r.status_code for r in responses] == [200] * n, [r.text[:200] for r in responses if r.status_code != 200]
    assert {r.json()["usage"]["completion_tokens"] for r in responses} == {LM_MAX_NEW}
    with httpx.Client(timeout=30) as client:  # and the app is gone afterwards
        assert client.post(url, json={"prompt": "a"}).status_code == 404
