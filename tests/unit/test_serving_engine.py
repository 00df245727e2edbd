"""The replica's Engine on tiny checkpoints, without Ray: classification, tagging, generation
(length, stop strings, context limit), the health probe and int8 quantization."""

from __future__ import annotations

import pytest

from serving.config import ServeSection
from serving.engine import Engine, Generation, GenerationItem, Rejected
from tests.unit.test_serving_checkpoints import (
    CLS_LABELS,
    classifier_checkpoint,
    lm_checkpoint,
    tagger_checkpoint,
)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return {
        "cls": Engine.load(classifier_checkpoint(root / "cls"), ServeSection()),
        "ner": Engine.load(tagger_checkpoint(root / "ner"), ServeSection()),
        "lm": Engine.load(lm_checkpoint(root / "lm"), ServeSection()),
        "random": Engine.load(classifier_checkpoint(root / "random", favour=None), ServeSection()),
        "int8": Engine.load(classifier_checkpoint(root / "int8", favour=None), ServeSection(quantize="int8")),
    }


def test_classify_gives_label_probabilities_independent_of_batch_padding(engines):
    engine = engines["cls"]
    texts = ["good", "the movie was really very good and the food was great"]
    batched = engine.classify(texts)
    assert [len(p) for p in batched] == [len(CLS_LABELS)] * 2
    assert all(sum(p) == pytest.approx(1.0) for p in batched)
    assert all(CLS_LABELS[max(range(2), key=p.__getitem__)] == "pos" for p in batched)
    # a padded row scores like the same text alone
    assert batched[0] == pytest.approx(engine.classify(texts[:1])[0], abs=1e-5)


def test_long_inputs_are_truncated_to_the_model_context(engines):
    engine = engines["cls"]
    assert engine.max_length == 128  # the tiny bert's positions; its tokenizer sets no limit
    [probs] = engine.classify(["good " * 1000])
    assert sum(probs) == pytest.approx(1.0)


def test_tag_returns_entities_with_original_offsets(engines):
    text = "Alice met Bob  in Paris"
    [entities] = engines["ner"].tag([text])
    assert [(e.type, e.text, e.start, e.end) for e in entities] == [
        ("PER", "Alice", 0, 5), ("PER", "met", 6, 9), ("PER", "Bob", 10, 13), ("PER", "in", 15, 17),
        ("PER", "Paris", 18, 23),
    ]
    assert all(0.9 < e.score <= 1.0 for e in entities)


def _item(prompt: str, max_tokens: int = 4, stop: tuple[str, ...] = (), temperature: float = 0.0, chat=False):
    return GenerationItem(prompt, chat, max_tokens, temperature, 1.0, stop)


def test_generate_length_stop_and_usage(engines):
    long_prompt = "bad " * 126
    out = engines["lm"].generate([
        _item("repeat : bad"),
        _item("repeat : bad", max_tokens=6, stop=(" good",)),
        _item("a", stop=("nowhere",)),
        _item(long_prompt),
        _item("repeat : bad", temperature=0.8),
    ])
    assert out[0] == Generation("good good good good", "length", prompt_tokens=5, completion_tokens=4)
    assert (out[1].text, out[1].finish_reason) == ("good", "stop")
    assert out[1].completion_tokens < 6  # the stop string ended generation early
    assert (out[2].text, out[2].finish_reason) == ("good good good good", "length")
    assert isinstance(out[3], Rejected) and "context of 128 tokens" in out[3].reason
    assert isinstance(out[4], Generation) and out[4].completion_tokens <= 4


def test_chat_prompts_render_with_the_template(engines):
    engine = engines["lm"]
    assert engine.has_chat_template
    prompt = engine.render_chat([{"role": "user", "content": "say good"}])
    assert prompt == "user : say good | assistant : "
    [gen] = engine.generate([_item(prompt, max_tokens=2, chat=True)])
    assert gen.text == "good good" and gen.prompt_tokens == 7  # no [CLS]/[SEP] added around a template


def test_probe_runs_the_model(engines):
    for engine in engines.values():
        engine.probe()


def test_int8_replaces_linear_layers_and_keeps_answers(engines):
    import torch

    quantized = engines["int8"]
    linear = quantized.model.bert.encoder.layer[0].attention.self.query
    assert isinstance(linear, torch.ao.nn.quantized.dynamic.Linear)
    texts = ["good day", "bad food"]
    # same weights (make_model seeds), fp32 vs int8 Linear layers
    for q, f in zip(quantized.classify(texts), engines["random"].classify(texts), strict=True):
        assert q == pytest.approx(f, abs=0.01)


def test_int8_needs_cpu_fp32():
    with pytest.raises(ValueError, match="int8"):
        ServeSection(quantize="int8", dtype="bf16")
    with pytest.raises(ValueError, match="int8"):
        ServeSection(quantize="int8", num_gpus_per_replica=1)
