"""Hostile input and faults against a real Serve app on 127.0.0.1:

- schemathesis, driven by each app's own OpenAPI document, sends generated valid and invalid
  requests to every operation (ZEROTUNE_FUZZ_EXAMPLES per operation and mode, 25 by default; for a
  longer run: ZEROTUNE_FUZZ_EXAMPLES=300 pytest tests/integration/test_serving_hostile.py -k schemathesis -s):
  no answer is a 5xx, every 4xx carries zerotune's JSON error body, every 2xx matches its schema;
- two replicas under bounded load, one killed with SIGKILL: the other keeps answering; the success
  rate without retries and the longest stall are measured (figures, not timed assertions).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from serving.config import ServeSection
from tests.net import free_port
from tests.unit.test_serving_checkpoints import classifier_checkpoint, lm_checkpoint

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token-0b7e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ_EXAMPLES = int(os.environ.get("ZEROTUNE_FUZZ_EXAMPLES", "25"))  # per operation and mode


@contextlib.contextmanager
def hostile_apps(root: Path):
    """The three apps on a connected Ray (bench/fuzz_serving.py uses them too): `fcls` (classifier,
    bearer token), `flm` (causal LM, no auth), `two` (classifier, two replicas); yields their URLs."""
    from ray import serve
    from ray.serve import RunTarget

    from serving.app import build_app, start

    (root / "token").write_text(TOKEN)
    port = free_port()
    # small limits, so generated requests reach them (and stay quick on 2 cores)
    limits = {"port": port, "num_cpus_per_replica": 0.2, "max_items_per_request": 4, "max_chars_per_item": 300,
              "max_new_tokens": 12}
    specs = {
        "fcls": ServeSection(**limits, app_name="fcls", route_prefix="/fcls", auth_token_file=str(root / "token")),
        "flm": ServeSection(**limits, app_name="flm", route_prefix="/flm"),
        "two": ServeSection(port=port, num_cpus_per_replica=0.2, app_name="two", route_prefix="/two",
                            min_replicas=2, max_replicas=2, health_check_period_s=1.0),
    }
    cls = classifier_checkpoint(root / "cls")
    checkpoints = {"fcls": cls, "flm": lm_checkpoint(root / "lm"), "two": cls}
    try:
        start(checkpoints["fcls"], specs.pop("fcls"))
        serve.run_many([
            RunTarget(build_app({"checkpoint": str(checkpoints[name]), "serve": spec.model_dump()}),
                      name=spec.app_name, route_prefix=spec.route_prefix)
            for name, spec in specs.items()
        ])
        yield {name: f"http://127.0.0.1:{port}/{name}" for name in ("fcls", "flm", "two")}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def urls(ray_cluster, tmp_path_factory):
    with hostile_apps(tmp_path_factory.mktemp("hostile")) as found:
        yield found


# --- schemathesis -----------------------------------------------------------------------------


def fuzz(url: str, headers: dict[str, str], examples: int = FUZZ_EXAMPLES) -> tuple[collections.Counter, list[str]]:
    """schemathesis on every operation of the app's OpenAPI document, `examples` valid and as many
    invalid requests each: the (operation, status) counts, and every answer that broke a rule."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)
    statuses: collections.Counter = collections.Counter()
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations

    def check(case, label: str, mode) -> None:
        resp = case.call(base_url=url, headers=headers, timeout=60)
        statuses[(label, resp.status_code)] += 1
        where = f"{label} {mode.value} -> {resp.status_code}: {resp.text[:300]}"
        if resp.status_code >= 500:
            problems.append(where)
        elif resp.status_code >= 400:
            ctype = str(resp.headers.get("content-type", ""))  # schemathesis keeps header lists
            try:
                body = resp.json() if "application/json" in ctype else None
            except ValueError:
                body = None
            if not (isinstance(body, dict) and body.get("error", {}).get("code") == resp.status_code):
                problems.append(where)
        else:
            try:
                case.validate_response(resp, checks=[not_a_server_error, content_type_conformance,
                                                     response_schema_conformance])
            except AssertionError as err:
                problems.append(f"{where} ({str(err)[:300]})")

    bounded = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                       suppress_health_check=list(HealthCheck))
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            run = bounded(given(case=operation.as_strategy(generation_mode=mode))(_bind(check, operation.label, mode)))
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (GET /healthz has no inputs)
                assert mode is schemathesis.GenerationMode.NEGATIVE
    return statuses, problems


def _bind(check, label: str, mode):
    """A one-argument test for @given (which refuses defaults) that checks under this label and mode."""

    def one(case) -> None:
        check(case, label, mode)

    return one


def test_schemathesis_finds_no_5xx_and_json_on_every_4xx(urls):
    figures = {}
    for name, headers in (("fcls", AUTH), ("flm", {})):
        statuses, problems = fuzz(urls[name], headers)
        assert not problems, problems[:5]
        figures[name] = dict(sorted(collections.Counter(code for (_, code) in statuses.elements()).items()))
        assert sum(statuses.values()) >= FUZZ_EXAMPLES  # it ran
        assert any(code == 200 for (_, code) in statuses) and any(400 <= code < 500 for (_, code) in statuses)
    print(f"\nschemathesis: {figures}")  # examples per status, per app


# --- a replica killed under load --------------------------------------------------------------


def _replica_pids(http: httpx.Client, url: str) -> set[int]:
    pids: set[int] = set()
    for _ in range(200):
        pids.add(http.get(f"{url}/healthz").json()["pid"])
        if len(pids) == 2:
            return pids
    raise AssertionError(f"saw only replicas {pids}")


def kill_one_of_two(url: str, clients: int = 6, total: int = 600, limit_s: float = 60.0) -> dict:
    """`clients` closed-loop clients send `total` requests (each once, no retries); a quarter of the
    way in, one of the two replicas gets SIGKILL. The figures, and the survivor's pid."""
    with httpx.Client(timeout=30) as http:
        victim, survivor = sorted(_replica_pids(http, url))
    results: list[tuple[float, float, int, str]] = []  # (sent, done, status, content-type)
    killed_at: list[float] = []

    async def client(c: httpx.AsyncClient, k: int) -> None:
        i = 0
        while len(results) < total and time.monotonic() - start < limit_s:
            sent = time.monotonic()
            try:
                resp = await c.post(f"{url}/v1/classify", json={"inputs": [f"good day {k} {i}"]})
                status, ctype = resp.status_code, resp.headers.get("content-type", "")
            except httpx.HTTPError:
                status, ctype = 0, ""
            results.append((sent, time.monotonic(), status, ctype))
            i += 1
            if len(results) == total // 4 and not killed_at:
                os.kill(victim, signal.SIGKILL)  # no retries anywhere: the client sends each request once
                killed_at.append(time.monotonic())

    async def go() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=30, limits=limits, transport=httpx.AsyncHTTPTransport(retries=0)) as c:
            await asyncio.gather(*(client(c, k) for k in range(clients)))

    start = time.monotonic()
    asyncio.run(go())
    assert killed_at, "the load ended before the kill"
    kill = killed_at[0]
    ok = [r for r in results if r[2] == 200]
    failed = [r for r in results if r[2] != 200]
    done = sorted([kill] + [r[1] for r in ok if r[1] >= kill])
    return {
        "requests": len(results), "ok": len(ok), "failed": len(failed),
        "failed_statuses": dict(collections.Counter(r[2] for r in failed)),
        "failed_without_json": sum(1 for r in failed if r[2] and not r[3].startswith("application/json")),
        "ok_after_kill": sum(1 for r in ok if r[0] > kill),
        "longest_stall_s": round(max(b - a for a, b in zip(done, done[1:], strict=False)), 3),
        "slowest_request_s": round(max(r[1] - r[0] for r in results), 3),
        "load_s": round(results[-1][1] - start, 2), "clients": clients, "survivor": survivor,
    }


def test_killing_one_of_two_replicas_under_load_keeps_the_endpoint_answering(urls):
    total, clients = 600, 6
    f = kill_one_of_two(urls["two"], clients=clients, total=total)
    print(f"\ntwo-replica kill: {f['ok']}/{f['requests']} answered 200 without retries ({f['failed']} failed: "
          f"{f['failed_statuses']}), {f['ok_after_kill']} answered after the kill, longest stall "
          f"{f['longest_stall_s']:.2f} s (after the kill: the longest wait for any answer), slowest request "
          f"{f['slowest_request_s']:.2f} s, load {f['load_s']:.1f} s")
    assert f["ok_after_kill"] >= total // 2
    assert f["failed"] <= clients  # at most the requests the victim held when it died
    assert f["failed_without_json"] == 0  # even those get the JSON body
    with httpx.Client(timeout=30) as http:  # the survivor answers
        assert f["survivor"] in {http.get(f"{urls['two']}/healthz").json()["pid"] for _ in range(10)}
