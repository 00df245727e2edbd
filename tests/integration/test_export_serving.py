"""`serve.backend: onnx` under real Ray Serve on 127.0.0.1: a classifier from a `zerotune export --int8`
directory and a tagger exported when its replica loads, answering on the torch backend's routes
with the torch backend's answers and batching."""

from __future__ import annotations

import httpx
import pytest

from serving.config import ServeSection
from serving.schemas import ClassifyResponse, TagResponse
from tests.net import free_port
from tests.unit.test_export import LABELS3, TEXTS, _checkpoint
from tests.unit.test_serving_checkpoints import NER_LABELS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    from ray import serve
    from ray.serve import RunTarget

    from serving.app import build_app
    from trainers.export import export

    root = tmp_path_factory.mktemp("onnx-serving")
    cls = _checkpoint(root / "cls", "sequence-classification", LABELS3, adapter=True)
    ner = _checkpoint(root / "ner", "token-classification", NER_LABELS)
    export(cls, root / "cls-export", int8=True)
    port = free_port()
    small = {"port": port, "num_cpus_per_replica": 0.5, "backend": "onnx", "max_batch_size": 4}
    specs = {"cls": (root / "cls-export", ServeSection(**small, app_name="cls", route_prefix="/cls", quantize="int8")),
             "ner": (ner, ServeSection(**small, app_name="ner", route_prefix="/ner"))}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run_many([RunTarget(build_app({"checkpoint": str(ck), "serve": spec.model_dump()}),
                                  name=spec.app_name, route_prefix=spec.route_prefix) for ck, spec in specs.values()])
        yield {"urls": {k: f"http://127.0.0.1:{port}/{k}" for k in specs}, "cls": cls, "ner": ner,
               "cls_export": root / "cls-export"}
    finally:
        serve.shutdown()


def test_onnx_int8_classifier_answers_like_the_engine_in_process(served):
    from serving.config import ServeSection
    from serving.engine import Engine

    # int8 against its own in-process engine (exact); fp32 ONNX against torch is in tests/unit/test_export.py
    want = Engine.load(served["cls_export"], ServeSection(backend="onnx", quantize="int8")).classify(
        TEXTS * 3)
    with httpx.Client(timeout=60) as http:
        card = http.get(f"{served['urls']['cls']}/v1/models").json()["data"][0]
        resp = http.post(f"{served['urls']['cls']}/v1/classify", json={"inputs": TEXTS * 3, "top_k": 1})
    assert (card["kind"], card["labels"]) == ("merged", LABELS3)
    body = ClassifyResponse.model_validate(resp.json())
    assert body.batch_size == 4  # 9 inputs: batches of max_batch_size
    got = [ranked[0].label for ranked in body.results]
    assert got == [LABELS3[max(range(3), key=p.__getitem__)] for p in want]


def test_onnx_tagger_exported_on_load_answers_like_torch(served):
    from serving.config import ServeSection
    from serving.engine import Engine

    text = "alice visited paris in london"
    [want] = Engine.load(served["ner"], ServeSection()).tag([text])
    with httpx.Client(timeout=60) as http:
        body = TagResponse.model_validate(http.post(f"{served['urls']['ner']}/v1/tag", json={"inputs": [text]}).json())
        assert http.get(f"{served['urls']['ner']}/healthz").status_code == 200
    assert [(e.type, e.start, e.end) for e in body.results[0]] == [(e.type, e.start, e.end) for e in want]
