"""The replica's Engine on tiny checkpoints, without Ray: classification, tagging, generation
(length, stop strings, context limit), the health probe and int8 quantization."""

from __future__ import annotations

import pytest

from serving.config import ServeSection
from serving.engine import START, Engine, Generation, GenerationItem, Rejected, _StopTrimmer, run_isolated
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


def _item(prompt: str, max_tokens: int | None = 4, stop: tuple[str, ...] = (), temperature: float = 0.0, chat=False,
          **kw) -> GenerationItem:
    return GenerationItem(prompt, chat, max_tokens, temperature, 1.0, stop, **kw)


def test_generate_length_stop_and_usage(engines):
    long_prompt = "bad " * 126
    out = engines["lm"].generate([
        _item("repeat : bad"),
        _item("repeat : bad", max_tokens=6, stop=(" good",)),
        _item("a", stop=("nowhere",)),
        _item(long_prompt),
        _item("repeat : bad", temperature=0.8),
        _item("repeat : bad", max_tokens=2),
    ])
    assert out[0] == [Generation("good good good good", "length", prompt_tokens=5, completion_tokens=4)]
    assert engines["lm"].stop_strings_supported((" good",))  # through transformers' StopStringCriteria
    [stopped] = out[1]
    assert (stopped.text, stopped.finish_reason, stopped.completion_tokens) == ("good", "stop", 2)
    assert [(g.text, g.finish_reason) for g in out[2]] == [("good good good good", "length")]
    assert isinstance(out[3], Rejected) and "context of 128 tokens" in out[3].reason
    assert out[4][0].completion_tokens <= 4
    assert out[5] == [Generation("good good", "length", prompt_tokens=5, completion_tokens=2)]  # its own limit


def test_without_max_tokens_a_choice_runs_to_the_server_limit_or_the_context(engines):
    [[gen]] = engines["lm"].generate([_item("repeat : bad", max_tokens=None, limit=7)])
    assert (gen.completion_tokens, gen.finish_reason) == (7, "length")
    [[gen]] = engines["lm"].generate([_item("bad " * 120, max_tokens=None, limit=100)])
    assert gen.completion_tokens == 128 - 122  # the prompt is 122 tokens with [CLS]/[SEP]
    [full] = engines["lm"].generate([_item("bad " * 126, max_tokens=None)])
    assert isinstance(full, Rejected) and full.kind == "context_length_exceeded"


def test_n_choices_seed_and_logprobs(engines):
    engine = engines["lm"]
    [greedy] = engine.generate([_item("repeat : bad", max_tokens=3, n=3, logprobs=2)])
    assert [g.text for g in greedy] == ["good good good"] * 3
    first = greedy[0].logprobs
    assert [s.token for s in first] == ["good"] * 3
    assert all(s.logprob <= 0 and s.top[0] == ("good", s.logprob) and len(s.top) == 2 for s in first)
    sampled = [engine.generate([_item("a", max_tokens=6, temperature=2.0, n=2, seed=seed)])[0] for seed in (1, 1, 2)]
    assert [g.text for g in sampled[0]] == [g.text for g in sampled[1]]  # same seed, same answer
    assert sampled[0] != sampled[2] or sampled[0][0] != sampled[0][1]  # sampling does sample


def test_streamed_items_receive_their_text_as_it_is_made(engines):
    events: list = []
    [gens] = engines["lm"].generate([_item("repeat : bad", max_tokens=5, sink=events.append, n=2)])
    assert events[0] == START
    for choice in (0, 1):
        pieces = [text for c, text in events[1:] if c == choice]
        assert pieces == ["good "] * 4 + ["good"]  # word by word, from transformers' TextStreamer
        assert "".join(pieces) == gens[choice].text


@pytest.mark.parametrize(("stop", "text"), [(" good good", "good"), ("good good good good good good", None)])
def test_streamed_text_leaves_stop_strings_out_like_the_full_answer(engines, stop, text):
    events: list = []
    [[gen]] = engines["lm"].generate([_item("repeat : bad", max_tokens=5, stop=(stop,), sink=events.append)])
    assert "".join(t for _, t in events[1:]) == gen.text == (text or "good good good good good")


def test_a_cancelled_item_stops_at_the_next_token(engines):
    engine = engines["lm"]
    seen: list = []
    item = _item("repeat : bad", max_tokens=100)
    other = _item("repeat : bad", max_tokens=30)

    def sink(event):
        seen.append(event)
        if len(seen) == 3:  # START and two pieces: the client goes away
            item.cancel.set()

    item.sink = sink
    before = engine.generations_cancelled
    [[cancelled], [full]] = engine.generate([item, other])
    assert cancelled.cancelled and cancelled.completion_tokens < 10
    assert full.completion_tokens == 30  # its neighbour in the batch is not affected
    assert engine.generations_cancelled == before + 1


def test_stop_trimmer_holds_back_what_may_become_a_stop_string():
    out: list[str] = []
    trimmer = _StopTrimmer(out.append, ("END", "xyz"))
    for piece in ["hello E", "N", "x", "y w", "orld E", "ND more"]:
        trimmer.feed(piece)
    trimmer.close()
    assert "".join(out) == "hello ENxy world "
    assert out[0] == "hello "  # 'E' waited until it could not start 'END'


def test_run_isolated_answers_each_item_when_one_fails():
    def fn(texts):
        if any("\ud800" in t for t in texts):
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return [len(t) for t in texts]

    assert run_isolated(fn, ["ab", "c"]) == [2, 1]
    out = run_isolated(fn, ["ab", "x\ud800", "c"])
    assert out[0] == 2 and out[2] == 1
    assert isinstance(out[1], Rejected) and "UnicodeEncodeError" in out[1].reason


def test_classify_isolates_a_poisoned_item_in_a_real_tokenizer(engines):
    engine = engines["cls"]
    out = run_isolated(engine.classify, ["good day", "x\ud83d", "bad"])
    assert isinstance(out[1], Rejected)
    assert all(sum(p) == pytest.approx(1.0) for p in (out[0], out[2]))


def test_chat_prompts_render_with_the_template(engines):
    engine = engines["lm"]
    assert engine.has_chat_template
    prompt = engine.render_chat([{"role": "user", "content": "say good"}])
    assert prompt == "user : say good | assistant : "
    [[gen]] = engine.generate([_item(prompt, max_tokens=2, chat=True)])
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
