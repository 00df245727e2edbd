"""The HTTP contract: every request and response body as a pydantic model.

zerotune's own routes (/v1/classify, /v1/tag) are strict: unknown keys and wrong JSON types are
422s, never coerced. The OpenAI-compatible routes accept what the OpenAI SDKs send: known fields
are typed as strictly, fields that would change the answer but are not implemented (tools,
penalties, logit_bias, ...) are 422s naming the field, and any other key is ignored and listed in
the `X-Zerotune-Ignored-Fields` response header. Size limits that depend on the `serve:` section
(items per request, characters per item) are checked by the routes.
Responses carry `batch_size`, the largest forward pass the request's inputs were part of, so a
client can see dynamic batching at work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 8  # choices per prompt
MAX_STOP = 4
MAX_TOP_LOGPROBS_COMPLETIONS = 5
MAX_TOP_LOGPROBS_CHAT = 20
IGNORED_FIELDS_HEADER = "X-Zerotune-Ignored-Fields"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _OpenAIRequest(BaseModel):
    """Unknown keys are kept aside (`model_extra`), ignored, and named in a response header."""

    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


_MODEL_FIELD = Field(
    default=None, description="Which served model answers: the app's id, an adapter's name or '<id>:<adapter>' "
    "(GET /v1/models lists them). Omitted: the app's own checkpoint.",
)

# --- classification -----------------------------------------------------------------------------


class ClassifyRequest(_Request):
    inputs: list[str] = Field(min_length=1, description="Texts to classify, one result list per text.")
    top_k: int = Field(default=1, ge=1, description="Labels to return per text, best first.")
    model: str | None = _MODEL_FIELD


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
    model: str | None = _MODEL_FIELD


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


# --- generation (OpenAI-compatible) -------------------------------------------------------------


class StreamOptions(_OpenAIRequest):
    include_usage: bool = Field(default=False, description="Send a last chunk with the usage and no choices.")


def _not_supported(name: str, value: Any, harmless: tuple[Any, ...]) -> None:
    if value not in harmless:
        raise ValueError(f"{name} is not supported by this server; omit it or send {harmless[-1]!r}")


class _Sampling(_OpenAIRequest):
    model: str | None = _MODEL_FIELD
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens to generate per choice (at most serve.max_new_tokens). Omitted: "
        "16 for completions; for chat, as many as serve.max_new_tokens and the model's context allow.",
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 is greedy decoding; default 1.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling mass; default 1.")
    n: int | None = Field(default=None, ge=1, le=MAX_N, description=f"Choices per prompt (at most {MAX_N}).")
    seed: int | None = Field(
        default=None, ge=-(2**63), le=2**64 - 1,
        description="Sampling seed: the same request with the same seed gives the same answer on this server.",
    )
    stop: str | list[str] | None = Field(default=None, description=f"Up to {MAX_STOP} strings that end a choice "
                                         "(not included in its text).")
    stream: bool | None = Field(default=False, description="Answer with Server-Sent Events, one chunk per piece of "
                                "text, ending with 'data: [DONE]'.")
    stream_options: StreamOptions | None = Field(default=None, description="Only with stream: true.")
    frequency_penalty: float | None = Field(default=None, description="Not supported: omit it or send 0.")
    presence_penalty: float | None = Field(default=None, description="Not supported: omit it or send 0.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Not supported: omit it or send {}.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        items = [v] if isinstance(v, str) else v
        if items is not None:
            if len(items) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop strings; got {len(items)}")
            if any(not s for s in items):
                raise ValueError("stop strings must not be empty")
        return items

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None, info) -> float | None:
        _not_supported(info.field_name, v, (None, 0, 0.0))
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict | None) -> dict | None:
        if v:
            raise ValueError("logit_bias is not supported by this server; omit it or send {}")
        return v

    @model_validator(mode="after")
    def _stream_only_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="The text to continue, or a list of texts (one set of choices each).")
    logprobs: int | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS_COMPLETIONS,
        description="Return each chosen token's log-probability and this many most likely alternatives.",
    )
    echo: bool | None = Field(default=None, description="Not supported: omit it or send false.")
    suffix: str | None = Field(default=None, description="Not supported: omit it.")
    best_of: int | None = Field(default=None, ge=1, description="Only best_of == n (or omitted) is supported.")

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        return v

    @model_validator(mode="after")
    def _unsupported(self):
        _not_supported("echo", self.echo, (None, False))
        _not_supported("suffix", self.suffix, (None, ""))
        if self.best_of is not None and self.best_of != self.choices_per_prompt:
            raise ValueError(f"best_of must equal n ({self.choices_per_prompt}) or be omitted; this server returns "
                             "every sampled choice")
        if self.stream and self.logprobs is not None:
            raise ValueError("logprobs is not supported with stream: true; omit one of them")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
    batch_size: int = Field(description="Largest generation batch this request was part of.")


class CompletionChunkChoice(_Response):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class CompletionChunk(_Response):
    """One Server-Sent Event of a streamed completion (OpenAI streams `text_completion` objects)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class TextPart(_OpenAIRequest):
    type: Literal["text"] = Field(description="Only text parts: this server has no image or audio input.")
    text: str


class ChatMessage(_OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="'developer' is read as 'system' (the chat template knows system)."
    )
    content: str | list[TextPart] | None = Field(description="Text, or a list of text parts (joined).")
    name: str | None = Field(default=None, description="Accepted and ignored.")

    @model_validator(mode="after")
    def _no_tool_calls(self):
        for key in ("tool_calls", "function_call"):
            if (self.model_extra or {}).get(key):
                raise ValueError(f"{key} is not supported by this server (no tools)")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, str]:
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text}


class ResponseFormat(_OpenAIRequest):
    type: Literal["text"] = Field(description="Only 'text': this server does not constrain output to JSON.")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Preferred over max_tokens when both "
                                              "are given.")
    logprobs: bool | None = Field(default=None, description="Return each chosen token's log-probability.")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS_CHAT, description="With logprobs: this many most likely alternatives."
    )
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, description="Not supported: omit it or send [].")
    tool_choice: Literal["none", "auto"] | None = Field(default=None, description="Only 'none' or 'auto' (no tools).")

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list | None) -> list | None:
        if v:
            raise ValueError("tools are not supported by this server; omit them")
        return v

    @model_validator(mode="after")
    def _logprob_options(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.stream and self.logprobs:
            raise ValueError("logprobs is not supported with stream: true; omit one of them")
        for key in ("functions", "audio", "prediction", "web_search_options"):
            if (self.model_extra or {}).get(key):
                raise ValueError(f"{key} is not supported by this server; omit it")
        modalities = (self.model_extra or {}).get("modalities")
        if modalities not in (None, ["text"]):
            raise ValueError("modalities: only ['text'] is supported")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Response):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    batch_size: int = Field(description="Largest generation batch this request was part of.")


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    """One Server-Sent Event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- service ------------------------------------------------------------------------------------


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the checkpoint was written (Unix seconds).")
    owned_by: str = "zerotune"
    task: str
    kind: str = Field(description="Checkpoint kind: full, adapter or merged.")
    base_model: str
    labels: list[str] | None
    routes: list[str] = Field(description="The routes that serve this model.")
    parent: str | None = Field(default=None, description="For an adapter served beside others: the app's id.")


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ReplicaStats(_Response):
    tokens_generated: int = Field(description="Tokens this replica has generated since it started.")
    generations_cancelled: int = Field(description="Choices stopped early because their client went away.")
    streams_open: int = Field(description="Streamed responses being sent now.")
    adapters_loaded: list[str] = Field(description="Adapters held in memory now (LRU, serve.max_adapters_per_replica).")


class Health(_Response):
    status: Literal["ok"] = "ok"
    task: str
    pid: int = Field(description="Replica process id (lets a client tell that a replica survived).")
    replica: str
    stats: ReplicaStats


class FieldError(_Response):
    loc: str = Field(description="Where in the body, dotted (e.g. inputs.3).")
    msg: str


class ErrorDetail(_Response):
    message: str = Field(description="What is wrong and, where it helps, what to send instead.")
    type: str = Field(description="Short machine-readable kind, e.g. invalid_request, payload_too_large.")
    code: int = Field(description="The HTTP status code, repeated.")
    param: str | None = Field(default=None, description="The field at fault, dotted, when there is one.")
    fields: list[FieldError] | None = Field(default=None, description="Per-field problems of a 422.")


class ErrorResponse(_Response):
    error: ErrorDetail
