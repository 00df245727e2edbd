"""The HTTP contract: every request and response body as a pydantic model.

Requests are strict (unknown keys and wrong JSON types are 422s, never coerced); size limits that
depend on the `serve:` section (items per request, characters per item) are checked by the routes.
Responses carry `batch_size`, the largest forward pass the request's inputs were part of, so a
client can see dynamic batching at work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- classification -----------------------------------------------------------------------------


class ClassifyRequest(_Request):
    inputs: list[str] = Field(min_length=1, description="Texts to classify, one result list per text.")
    top_k: int = Field(default=1, ge=1, description="Labels to return per text, best first.")


class LabelScore(_Response):
    label: str
    score: float = Field(description="Softmax probability.")


class ClassifyResponse(_Response):
    model: str
    results: list[list[LabelScore]] = Field(description="Per input, the top_k labels, best first.")
    batch_size: int = Field(description="Largest forward pass this request's inputs were batched into.")


# --- token classification -----------------------------------------------------------------------


class TagRequest(_Request):
    inputs: list[str] = Field(min_length=1, description="Texts to tag, one entity list per text.")


class Entity(_Response):
    type: str = Field(description="Entity type: the tag without its B-/I- prefix.")
    text: str = Field(description="The entity's characters in the input, verbatim.")
    score: float = Field(description="Mean probability of the entity's word tags.")
    start: int = Field(description="Character offset of the first character.")
    end: int = Field(description="Character offset one past the last character.")


class TagResponse(_Response):
    model: str
    results: list[list[Entity]]
    batch_size: int = Field(description="Largest forward pass this request's inputs were batched into.")


# --- generation (OpenAI-compatible subset) ------------------------------------------------------


class _Sampling(_Request):
    model: str | None = Field(default=None, description="Optional; when given it must be the served model's id.")
    max_tokens: int = Field(default=16, ge=1, description="Most tokens to generate (capped by serve.max_new_tokens).")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 is greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 strings that end the completion.")
    stream: Literal[False] = Field(default=False, description="Streaming is not supported; omit or false.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        items = [v] if isinstance(v, str) else v
        if items is not None:
            if len(items) > 4:
                raise ValueError(f"at most 4 stop strings; got {len(items)}")
            if any(not s for s in items):
                raise ValueError("stop strings must not be empty")
        return items

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class CompletionRequest(_Sampling):
    prompt: str = Field(description="The text to continue.")


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: FinishReason


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    batch_size: int = Field(description="Generation batch this request was part of.")


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")


class ChatChoice(_Response):
    index: int
    message: ChatMessage
    finish_reason: FinishReason


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    batch_size: int = Field(description="Generation batch this request was part of.")


# --- service ------------------------------------------------------------------------------------


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "zerotune"
    task: str
    kind: str = Field(description="Checkpoint kind: full, adapter (merged at load) or merged.")
    base_model: str
    labels: list[str] | None
    routes: list[str] = Field(description="The routes that serve this model.")


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Response):
    status: Literal["ok"] = "ok"
    task: str
    pid: int = Field(description="Replica process id (lets a client tell that a replica survived).")
    replica: str


class FieldError(_Response):
    loc: str = Field(description="Where in the body, dotted (e.g. inputs.3).")
    msg: str


class ErrorDetail(_Response):
    message: str = Field(description="What is wrong and, where it helps, what to send instead.")
    type: str = Field(description="Short machine-readable kind, e.g. invalid_request, payload_too_large.")
    code: int = Field(description="The HTTP status code, repeated.")
    fields: list[FieldError] | None = Field(default=None, description="Per-field problems of a 422.")


class ErrorResponse(_Response):
    error: ErrorDetail
