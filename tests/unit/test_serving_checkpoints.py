"""Servable tiny checkpoints for the serving tests, written through the real checkpoint contract
(`write_servable`), with heads set so their answers are known in advance:

- classifier: the head always favours one label (the LoRA variant keeps the favoured head in the
  adapter, so the answer proves the adapter was applied on top of an unbiased base);
- tagger: every word is B-PER, so each word comes back as its own PER entity;
- language model (gpt2): the final layer norm always emits the embedding of "good", so greedy
  decoding repeats "good".

The tests here check those claims after a `load_for_inference` round trip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import make_model

CLS_LABELS = ["neg", "pos"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
LM_WORD = "good"


def _train_section(base: str, task: str, *, lora: bool = False):
    from trainers.config import TrainSection

    return TrainSection.model_validate({
        "model": {"name_or_path": base, "task": task},
        "lora": {"enabled": lora, "r": 4, "target_modules": ["query", "value"] if lora else None},
        "data": {"train": "unused.csv"},
    })


def _favour(head, index: int) -> None:
    import torch

    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[index] = 6.0


def _write(path: Path, model, base: str, task: str, labels: list[str] | None, *, lora: bool = False) -> Path:
    from trainers.checkpoint import write_servable
    from trainers.model import count_parameters, load_tokenizer

    write_servable(
        path, model=model, tokenizer=load_tokenizer(base), train=_train_section(base, task, lora=lora),
        labels=labels, step=1, epoch=1.0, metrics={"eval_loss": 1.0}, params=count_parameters(model), probe=None,
    )
    return path


def classifier_checkpoint(root: Path, *, favour: str | None = "pos", adapter: bool = False,
                          base: str | None = None) -> Path:
    """base: an existing base (one of an earlier call's) so that several adapters share it."""
    from trainers.model import load_base_model
    from trainers.tasks import get_task

    task = "sequence-classification"
    base = base or make_model(root / "base", task, "bert", CLS_LABELS)
    model = load_base_model(base, get_task(task), CLS_LABELS)
    if favour is not None:
        _favour(model.classifier, CLS_LABELS.index(favour))
    if adapter:
        from peft import LoraConfig, TaskType, get_peft_model

        # the (favoured) head travels in the adapter as a module to save; the base keeps its random one
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]))
    return _write(root / "checkpoint", model, base, task, CLS_LABELS, lora=adapter)


def tagger_checkpoint(root: Path) -> Path:
    from trainers.model import load_base_model
    from trainers.tasks import get_task

    task = "token-classification"
    base = make_model(root / "base", task, "bert", NER_LABELS)
    model = load_base_model(base, get_task(task), NER_LABELS)
    _favour(model.classifier, NER_LABELS.index("B-PER"))
    return _write(root / "checkpoint", model, base, task, NER_LABELS)


def lm_base(path: Path, *, context: int = 128) -> str:
    """The tiny gpt2 base with a tokenizer that can also spell 'abcdef' (the pieces ##b..##f), which
    transformers' StopStringCriteria decodes every vocabulary entry after; `context` positions."""
    import torch
    from transformers import AutoModelForCausalLM, BertTokenizerFast

    from tests.tiny import CHAT_TEMPLATE, VOCAB

    base = make_model(path, "causal-lm", "gpt2")
    vocab = VOCAB + ["##b", "##c", "##d", "##e", "##f"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.eos_token, tok.bos_token, tok.chat_template = "[SEP]", "[CLS]", CHAT_TEMPLATE
    tok.save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(len(vocab))
    if context > model.config.n_positions:  # more positions, the first ones unchanged
        old = model.transformer.wpe
        wpe = torch.nn.Embedding(context, old.embedding_dim)
        with torch.no_grad():
            wpe.weight[: old.num_embeddings] = old.weight
        model.transformer.wpe = wpe
        model.config.n_positions = context
    model.save_pretrained(base, safe_serialization=True)
    return base


def _always(ln_f, wte, word: int) -> None:
    """tied embeddings: logits = wte @ ln_f.bias once ln_f's weight is 0, largest for the word itself"""
    import torch

    with torch.no_grad():
        ln_f.weight.zero_()
        ln_f.bias.copy_(wte.weight[word] * 4)


def lm_checkpoint(root: Path, *, context: int = 128, word: str = LM_WORD) -> Path:
    from trainers.model import load_base_model, load_tokenizer
    from trainers.tasks import get_task

    task = "causal-lm"
    base = lm_base(root / "base", context=context)
    model = load_base_model(base, get_task(task), None)
    _always(model.transformer.ln_f, model.transformer.wte, load_tokenizer(base).convert_tokens_to_ids(word))
    return _write(root / "checkpoint", model, base, task, None)


def lm_adapter_checkpoint(root: Path, base: str, *, word: str) -> Path:
    """A LoRA adapter of `base` whose saved copy of the final layer norm makes it always say `word`."""
    from peft import LoraConfig, TaskType, get_peft_model

    from trainers.model import load_base_model, load_tokenizer
    from trainers.tasks import get_task

    task = "causal-lm"
    model = load_base_model(base, get_task(task), None)
    wte = model.transformer.wte
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules=["c_attn"],
                                             modules_to_save=["ln_f"]))
    ln_f = model.base_model.model.transformer.ln_f.modules_to_save["default"]
    _always(ln_f, wte, load_tokenizer(base).convert_tokens_to_ids(word))
    return _write(root / "checkpoint", model, base, task, None, lora=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-checkpoints")
    return {
        "cls": classifier_checkpoint(root / "cls", favour="pos"),
        "adapter": classifier_checkpoint(root / "adapter", favour="neg", adapter=True),
        "ner": tagger_checkpoint(root / "ner"),
        "lm": lm_checkpoint(root / "lm"),
    }


def test_manifests_say_what_was_written(checkpoints):
    from trainers.checkpoint import read_manifest

    kinds = {name: (read_manifest(p).task, read_manifest(p).kind) for name, p in checkpoints.items()}
    assert kinds == {
        "cls": ("sequence-classification", "full"),
        "adapter": ("sequence-classification", "adapter"),
        "ner": ("token-classification", "full"),
        "lm": ("causal-lm", "full"),
    }
    assert read_manifest(checkpoints["adapter"]).labels == CLS_LABELS


def test_favoured_heads_survive_the_round_trip(checkpoints):
    import torch

    from trainers.checkpoint import load_for_inference

    for name, favoured in (("cls", "pos"), ("adapter", "neg")):
        loaded = load_for_inference(checkpoints[name])
        model, tok = loaded.model, loaded.tokenizer
        with torch.no_grad():
            probs = model(**tok(["the movie was fun"], return_tensors="pt")).logits.softmax(-1)[0]
        assert CLS_LABELS[int(probs.argmax())] == favoured, name
        assert float(probs.max()) > 0.99

    loaded = load_for_inference(checkpoints["lm"])
    model, tok = loaded.model, loaded.tokenizer
    ids = tok("repeat : bad", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.input_ids.shape[1]:]) == "good good good"
