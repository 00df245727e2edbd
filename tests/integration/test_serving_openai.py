"""The production endpoint for generative models and many adapters, on a real Serve app on
127.0.0.1: the official `openai` SDK against every generation route (streamed and not, bodies
validated with openai's own types), a stream cut by its client, several LoRA adapters on one base
(Serve model multiplexing, LRU), and the metrics on Ray's Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from serving.config import ServeSection
from tests.net import free_port
from tests.unit.test_serving_checkpoints import (
    classifier_checkpoint,
    lm_adapter_checkpoint,
    lm_base,
    lm_checkpoint,
)

pytestmark = pytest.mark.integration

TOKEN = "openai-token-51c2"
LM_MAX_NEW = 40
LONG_MAX_NEW = 4000


@pytest.fixture(scope="module")
def urls(ray_cluster, tmp_path_factory):
    from ray import serve
    from ray.serve import RunTarget

    from serving.app import build_app, start

    root = tmp_path_factory.mktemp("openai")
    (root / "token").write_text(TOKEN)
    port = free_port()
    small = {"port": port, "num_cpus_per_replica": 0.2}
    base = lm_base(root / "lm-base")
    cls_base = str(root / "neg" / "base")
    checkpoints = {
        "gen": lm_adapter_checkpoint(root / "good", base, word="good"),
        "long": lm_checkpoint(root / "long", context=LONG_MAX_NEW + 96),
        "mcls": classifier_checkpoint(root / "neg", favour="neg", adapter=True),
    }
    adapters = {
        "gen": [{"name": "bad-lm", "checkpoint": str(lm_adapter_checkpoint(root / "bad", base, word="bad"))}],
        "mcls": [{"name": name, "checkpoint": str(classifier_checkpoint(root / name, favour="pos", adapter=True,
                                                                      base=cls_base))} for name in ("pos", "pos2")],
    }
    specs = {
        "long": ServeSection(**small, app_name="long", route_prefix="/long", max_new_tokens=LONG_MAX_NEW),
        "mcls": ServeSection(**small, app_name="mcls", route_prefix="/mcls", adapters=adapters["mcls"],
                             max_adapters_per_replica=1),
        # the metrics test's own apps: no other test sends them traffic (Ray exports counts with a delay)
        "mbusy": ServeSection(**small, app_name="mbusy", route_prefix="/mbusy", max_ongoing_requests=1,
                              max_queued_requests=1, max_batch_size=1, max_new_tokens=LM_MAX_NEW),
        "metered": ServeSection(**small, app_name="metered", route_prefix="/metered"),
    }
    checkpoints["mbusy"] = checkpoints["long"]
    checkpoints["metered"] = classifier_checkpoint(root / "metered")
    try:
        gen_url = start(checkpoints["gen"], ServeSection(
            **small, app_name="gen", route_prefix="/gen", auth_token_file=str(root / "token"),
            max_new_tokens=LM_MAX_NEW, adapters=adapters["gen"],
        ))
        serve.run_many([
            RunTarget(build_app({"checkpoint": str(checkpoints[name]), "serve": spec.model_dump()}),
                      name=spec.app_name, route_prefix=spec.route_prefix)
            for name, spec in specs.items()
        ])
        yield {"gen": gen_url, **{name: f"http://127.0.0.1:{port}{spec.route_prefix}" for name, spec in specs.items()}}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(urls):
    import openai

    with openai.OpenAI(base_url=f"{urls['gen']}/v1", api_key=TOKEN, max_retries=0, timeout=60) as c:
        yield c


# --- the OpenAI SDK against every route -----------------------------------------------------------


def test_models_list_and_retrieve(client):
    from openai.types import Model

    raw = client.models.with_raw_response.list()
    assert [m.id for m in raw.parse()] == ["gen", "bad-lm"]
    for card in json.loads(raw.text)["data"]:
        Model.model_validate(card)
    assert client.models.retrieve("bad-lm").id == "bad-lm"


def test_completion_with_n_seed_logprobs_and_a_stop_list(client):
    from openai.types import Completion

    raw = client.completions.with_raw_response.create(
        model="gen", prompt=["repeat : fun", "repeat : sad"], max_tokens=4, temperature=0, n=2, logprobs=2,
        stop=["nowhere", " good good good"], seed=3, user="u-7",
    )
    body = Completion.model_validate(json.loads(raw.text))
    assert raw.headers["x-zerotune-ignored-fields"] == "user"
    assert [c.index for c in body.choices] == [0, 1, 2, 3]
    assert {(c.text, c.finish_reason) for c in body.choices} == {("good", "stop")}  # cut before the stop
    assert body.choices[0].logprobs.tokens[0] == "good" and len(body.choices[0].logprobs.top_logprobs[0]) == 2
    assert body.usage.completion_tokens == 4 * 4 and body.usage.prompt_tokens == 2 * 5


def test_sampling_with_a_seed_repeats(client):
    texts = [client.completions.create(model="gen", prompt="a", max_tokens=5, temperature=1.5, seed=11).choices[0].text
             for _ in range(2)]
    assert texts[0] == texts[1]


def test_streamed_completion(client):
    from openai.types import Completion

    chunks = list(client.completions.create(model="gen", prompt="repeat : fun", max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert all(isinstance(c, Completion) for c in chunks) and len(chunks) >= 5
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "good good good good good"
    assert chunks[-2].choices[0].finish_reason == "length"
    Completion.model_validate(chunks[-2].model_dump())
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_chat_with_developer_role_text_parts_and_max_completion_tokens(client):
    from openai.types.chat import ChatCompletion

    raw = client.chat.completions.with_raw_response.create(
        model="gen", temperature=0, max_completion_tokens=3, logprobs=True, top_logprobs=3,
        messages=[{"role": "developer", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "say "}, {"type": "text", "text": "fun"}]}],
        metadata={"ticket": "9"}, store=False,
    )
    body = ChatCompletion.model_validate(json.loads(raw.text))
    assert raw.headers["x-zerotune-ignored-fields"] == "metadata,store"
    [choice] = body.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "good good good",
                                                                                 "length")
    assert [t.token for t in choice.logprobs.content] == ["good"] * 3 and len(choice.logprobs.content[0].top_logprobs) == 3


def test_streamed_chat_with_usage(client):
    from openai.types.chat import ChatCompletionChunk

    stream = client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "say fun"}],
                                            max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = [ChatCompletionChunk.model_validate(c.model_dump()) for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "good good good good"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.total_tokens > 4


def test_each_adapter_answers_its_own_way_on_one_base(client):
    chat = client.chat.completions.create(model="bad-lm", messages=[{"role": "user", "content": "say fun"}],
                                          max_tokens=2, temperature=0)
    assert (chat.model, chat.choices[0].message.content) == ("bad-lm", "bad bad")
    streamed = client.completions.create(model="gen:bad-lm", prompt="repeat : fun", max_tokens=2, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "bad bad"
    own = client.completions.create(model="gen", prompt="repeat : fun", max_tokens=2, temperature=0)
    assert own.choices[0].text == "good good"
    routed = client.completions.create(model="bad-lm", prompt="x", max_tokens=1, temperature=0,
                                       extra_headers={"serve_multiplexed_model_id": "bad-lm"})
    assert routed.choices[0].text == "bad"


def test_what_cannot_work_is_refused_naming_the_field(client, urls):
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt="a")
    assert "'gen', 'bad-lm'" in info.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "a"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    assert info.value.body["param"] == "tools"
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.completions.create(model="gen", prompt="a", max_tokens=LM_MAX_NEW + 1)
    assert "serve.max_new_tokens" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="gen", prompt="a", extra_headers={"serve_multiplexed_model_id": "bad-lm"})
    with pytest.raises(openai.AuthenticationError), openai.OpenAI(base_url=f"{urls['gen']}/v1", api_key="wrong",
                                                                  max_retries=0) as wrong:
        wrong.models.list()


def test_openapi_carries_the_bearer_scheme(urls):
    doc = httpx.get(f"{urls['gen']}/openapi.json", timeout=30).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/chat/completions"]["post"]["security"] == [{"HTTPBearer": []}]


# --- a stream cut by its client ---------------------------------------------------------------


def _stats(http: httpx.Client, url: str) -> dict:
    body = http.get(f"{url}/healthz").json()
    return {"pid": body["pid"], **body["stats"]}


def _wait_for(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_client_that_disconnects_stops_its_generation_and_the_replica_lives_on(urls):
    url = urls["long"]
    with httpx.Client(timeout=60) as http:
        before = _stats(http, url)
        with http.stream("POST", f"{url}/v1/completions", json={
            "prompt": "repeat : bad", "max_tokens": LONG_MAX_NEW, "temperature": 0, "stream": True,
        }) as resp:
            assert resp.status_code == 200
            first = next(line for line in resp.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"].startswith("good")
        # the connection is closed: the replica notices and the row stops at its next token
        after = _wait_for(lambda: (s := _stats(http, url))["generations_cancelled"] > before["generations_cancelled"]
                          and s, what="the cancelled generation")
        assert after["streams_open"] == 0 and after["pid"] == before["pid"]
        assert after["tokens_generated"] - before["tokens_generated"] < LONG_MAX_NEW / 2
        ok = http.post(f"{url}/v1/completions", json={"prompt": "repeat : bad", "max_tokens": 3, "temperature": 0})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "good good good"
        assert _stats(http, url)["pid"] == before["pid"]


# --- many adapters: LRU per replica ------------------------------------------------------------


def test_classifier_adapters_lru_and_models_list(urls):
    url = urls["mcls"]
    with httpx.Client(timeout=60) as http:
        ids = [m["id"] for m in http.get(f"{url}/v1/models").json()["data"]]
        assert ids == ["mcls", "pos", "pos2"]

        def top(model):
            body = http.post(f"{url}/v1/classify", json={"inputs": ["fun day"], **({"model": model} if model else {})})
            assert body.status_code == 200, body.text
            return body.json()["model"], body.json()["results"][0][0]["label"]

        assert top(None) == ("mcls", "neg") and top("pos") == ("pos", "pos") and top("mcls:pos2") == ("pos2", "pos")
        # max_adapters_per_replica 1: pos2 pushed pos out; the unload runs between batches
        assert _wait_for(lambda: _stats(http, url)["adapters_loaded"] == ["pos2"], what="the LRU eviction")
        assert top("pos") == ("pos", "pos") and top(None) == ("mcls", "neg")
        missing = http.post(f"{url}/v1/classify", json={"inputs": ["a"], "model": "neg9"})
        assert missing.status_code == 404 and "'mcls', 'pos', 'pos2'" in missing.json()["error"]["message"]


# --- metrics on Ray's Prometheus endpoint ------------------------------------------------------


def _scrape() -> list[tuple[str, dict[str, str], float]]:
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    [node] = [n for n in ray.nodes() if n["Alive"]]
    text = httpx.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=30).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _total(samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_reach_rays_prometheus_endpoint_with_the_right_counts(urls):
    app = {"application": "metered"}
    names = {
        "ok": ("ray_zerotune_requests_total", {**app, "route": "/v1/classify", "status": "200"}),
        "bad": ("ray_zerotune_requests_total", {**app, "route": "/v1/classify", "status": "422"}),
        "latency": ("ray_zerotune_request_latency_ms_count", {**app, "route": "/v1/classify"}),
        # each request's two inputs form one batch (Ray reports a histogram's sum from bucket midpoints)
        "batches": ("ray_zerotune_batch_size_count", {**app, "kind": "classify"}),
        "batches_up_to_1": ("ray_zerotune_batch_size_bucket", {**app, "kind": "classify", "le": "1.0"}),
        "batches_up_to_2": ("ray_zerotune_batch_size_bucket", {**app, "kind": "classify", "le": "2.0"}),
        "tokens": ("ray_zerotune_tokens_generated_total", {"application": "mbusy", "model": "mbusy"}),
        "rejected": ("ray_zerotune_queue_rejections_total", {"status": "503"}),
    }
    first = _scrape()
    before = {k: _total(first, n, **lab) for k, (n, lab) in names.items()}
    with httpx.Client(timeout=60) as http:
        for i in range(7):
            assert http.post(f"{urls['metered']}/v1/classify", json={"inputs": [f"day {i}", "fun"]}).status_code == 200
        for body in ({"inputs": ["a"] * 100}, {"inputs": ["a"], "top_k": 9}):
            assert http.post(f"{urls['metered']}/v1/classify", json=body).status_code == 422

    async def overload():
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(*(c.post(f"{urls['mbusy']}/v1/completions", json={
                "prompt": "repeat : bad", "max_tokens": LM_MAX_NEW, "temperature": 0}) for _ in range(8)))

    answers = asyncio.run(overload())
    codes = [r.status_code for r in answers]
    assert codes.count(503) >= 1, codes
    tokens = sum(r.json()["usage"]["completion_tokens"] for r in answers if r.status_code == 200)
    expected = {"ok": 7, "bad": 2, "latency": 9, "batches": 7, "batches_up_to_1": 0, "batches_up_to_2": 7,
                "tokens": tokens, "rejected": codes.count(503)}

    def counted():
        now = _scrape()
        got = {k: _total(now, n, **lab) - before[k] for k, (n, lab) in names.items()}
        return got if got == expected else None

    try:  # Ray exports application metrics every few seconds
        _wait_for(counted, timeout=90, what="the metrics")
    except AssertionError:
        now = _scrape()
        raise AssertionError({k: _total(now, n, **lab) - before[k] for k, (n, lab) in names.items()}) from None
