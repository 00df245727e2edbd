"""Tiny models and learnable synthetic data, built in code (no hub, no network).

Models are saved with save_pretrained so tests exercise the real from_pretrained path.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "happy", "love", "excellent", "nice", "fun", "best"]
NEGATIVE = ["bad", "awful", "sad", "hate", "terrible", "boring", "worst", "poor"]
FILLER = ["the", "movie", "was", "is", "very", "food", "day", "a", "it", "this", "really", "so"]
PEOPLE = ["alice", "bob", "carol", "dave", "erin"]
PLACES = ["paris", "london", "tokyo", "berlin", "rome"]
VERBS = ["visited", "met", "saw", "left", "liked"]
DIGITS = [str(i) for i in range(10)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER + PEOPLE + PLACES + VERBS + DIGITS
                             + ["in", "and", "repeat", ":", "user", "assistant", "say", "<", ">", "|"]))
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} | {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def make_tokenizer(path: Path):
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    tok.eos_token = "[SEP]"
    tok.bos_token = "[CLS]"
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return tok


def make_model(path: Path, task: str, arch: str = "bert", labels: list[str] | None = None) -> str:
    """Save a tiny `arch` model with `task`'s head and the tiny tokenizer at `path`."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    tok = make_tokenizer(path)
    common = dict(vocab_size=len(VOCAB), pad_token_id=tok.pad_token_id)
    if arch == "bert":
        config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=128, **common)
    elif arch == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, **common)
    elif arch == "llama":
        config = tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=64, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, **common)
    else:
        raise ValueError(arch)
    if labels:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {x: i for i, x in enumerate(labels)}
    auto = {"sequence-classification": tf.AutoModelForSequenceClassification,
            "token-classification": tf.AutoModelForTokenClassification,
            "causal-lm": tf.AutoModelForCausalLM}[task]
    model = auto.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """'pos' rows contain positive words, 'neg' rows negative ones: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, 3) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def ner_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, verb, place = rng.choice(PEOPLE), rng.choice(VERBS), rng.choice(PLACES)
        filler = rng.sample(FILLER, 2)
        tokens = [person, verb, *filler, "in", place]
        tags = ["B-PER", "O", "O", "O", "O", "B-LOC"]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def lm_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt 'repeat : w1 w2 w3' -> completion 'w1 w2 w3'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = " ".join(rng.sample(POSITIVE + NEGATIVE, 3))
        rows.append({"prompt": f"repeat : {words} :", "completion": words})
    return rows


def write_csv(path: Path, rows: list[dict]) -> str:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pretrain_copy_lm(path: Path, steps: int = 80) -> str:
    """Teach the tiny causal LM at `path` to copy words it is not tested on (fillers, names,
    places), in-process. LoRA adapts a base that can already do something, as in real use;
    on a random tiny base the frozen embeddings leave LoRA almost nothing to steer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.config import DataSection
    from trainers.encode import collate
    from trainers.tasks import get_task

    torch.manual_seed(0)
    rng = random.Random(1)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = [{"prompt": f"repeat : {' '.join(w)} :", "completion": " ".join(w)}
            for w in (rng.sample(FILLER + PEOPLE + PLACES, 3) for _ in range(steps * 32))]
    encoded = get_task("causal-lm").encode(rows, tok, DataSection(train="unused.jsonl", max_length=24), None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for s in range(steps):
        loss = model(**collate(encoded[s * 32:(s + 1) * 32], tok.pad_token_id)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path, safe_serialization=True)
    return str(path)
