"""Request models are strict: wrong JSON types, unknown keys and empty lists are errors that name
the field; nothing is coerced."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serving.schemas import (
    ChatCompletionRequest,
    ClassifyRequest,
    ClassifyResponse,
    CompletionRequest,
    ErrorResponse,
    TagRequest,
)


def _errors(model, body: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(json.dumps(body))
    return [(".".join(str(x) for x in e["loc"]), e["type"]) for e in info.value.errors()]


def test_classify_defaults_and_valid_body():
    req = ClassifyRequest.model_validate_json('{"inputs": ["good day", ""]}')
    assert req.inputs == ["good day", ""] and req.top_k == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"inputs": []}, ("inputs", "too_short")),
        ({"inputs": "one string"}, ("inputs", "list_type")),
        ({"inputs": ["a", 2]}, ("inputs.1", "string_type")),
        ({"inputs": ["a"], "top_k": "2"}, ("top_k", "int_type")),
        ({"inputs": ["a"], "top_k": 1.5}, ("top_k", "int_type")),
        ({"inputs": ["a"], "top_k": 0}, ("top_k", "greater_than_equal")),
        ({"inputs": ["a"], "topk": 2}, ("topk", "extra_forbidden")),
        ({}, ("inputs", "missing")),
    ],
)
def test_classify_rejects(body, expected):
    assert expected in _errors(ClassifyRequest, body)


def test_tag_request_is_strict_too():
    assert ("inputs.0", "string_type") in _errors(TagRequest, {"inputs": [None]})


def test_completion_stop_forms_and_limits():
    assert CompletionRequest.model_validate({"prompt": "p", "stop": "\n"}).stops == ("\n",)
    assert CompletionRequest.model_validate({"prompt": "p", "stop": ["a", "b"]}).stops == ("a", "b")
    assert CompletionRequest.model_validate({"prompt": "p"}).stops == ()
    assert CompletionRequest.model_validate_json('{"prompt": "p", "temperature": 0}').temperature == 0.0
    assert ("stop", "value_error") in _errors(CompletionRequest, {"prompt": "p", "stop": list("abcde")})
    assert ("stop", "value_error") in _errors(CompletionRequest, {"prompt": "p", "stop": [""]})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "p", "temperature": 2.5}, ("temperature", "less_than_equal")),
        ({"prompt": "p", "top_p": 0}, ("top_p", "greater_than")),
        ({"prompt": "p", "max_tokens": 0}, ("max_tokens", "greater_than_equal")),
        ({"prompt": "p", "max_tokens": "5"}, ("max_tokens", "int_type")),
        ({"prompt": [1, 2]}, ("prompt.str", "string_type")),
        ({"prompt": []}, ("prompt", "value_error")),
        ({"prompt": "p", "n": 0}, ("n", "greater_than_equal")),
        ({"prompt": "p", "n": 9}, ("n", "less_than_equal")),
        ({"prompt": "p", "logprobs": 6}, ("logprobs", "less_than_equal")),
        ({"prompt": "p", "seed": 2**64}, ("seed", "less_than_equal")),
        ({"prompt": "p", "stream": "yes"}, ("stream", "bool_type")),
        ({"prompt": "p", "stream_options": {"include_usage": True}}, ("", "value_error")),
        ({"prompt": "p", "stream": True, "logprobs": 1}, ("", "value_error")),
        ({"prompt": "p", "echo": True}, ("", "value_error")),
        ({"prompt": "p", "best_of": 3}, ("", "value_error")),
        ({"prompt": "p", "frequency_penalty": 0.5}, ("frequency_penalty", "value_error")),
        ({"prompt": "p", "logit_bias": {"50256": -100}}, ("logit_bias", "value_error")),
    ],
)
def test_completion_rejects(body, expected):
    assert expected in _errors(CompletionRequest, body)


def test_what_the_openai_sdk_sends_is_accepted_and_unknown_keys_are_listed():
    req = CompletionRequest.model_validate_json(json.dumps({
        "model": "m", "prompt": ["a", "b"], "n": 2, "seed": 7, "logprobs": 2, "max_tokens": 5, "stop": "x",
        "user": "u-1", "metadata": {"k": "v"}, "frequency_penalty": 0, "presence_penalty": 0.0, "best_of": 2,
        "echo": False, "stream": False,
    }))
    assert req.prompts == ["a", "b"] and req.choices_per_prompt == 2 and req.stops == ("x",)
    assert req.ignored_fields == ["metadata", "user"]
    streamed = CompletionRequest.model_validate({"prompt": "p", "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.include_usage


def test_chat_accepts_developer_role_text_parts_and_max_completion_tokens():
    req = ChatCompletionRequest.model_validate_json(json.dumps({
        "model": "m", "max_completion_tokens": 3, "max_tokens": 9, "logprobs": True, "top_logprobs": 2,
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "say "}, {"type": "text", "text": "good"}],
             "name": "ann"},
            {"role": "assistant", "content": None, "refusal": None},
        ],
        "tool_choice": "none", "tools": [], "response_format": {"type": "text"}, "store": False,
    }))
    assert req.token_limit == 3
    assert [m.for_template() for m in req.messages] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "say good"},
        {"role": "assistant", "content": ""},
    ]
    assert req.ignored_fields == ["store"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
         "messages.0.content.list[TextPart].0.type"),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0"),
        ({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]}, "messages.0"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
         "response_format.type"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, ""),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "modalities": ["audio"]}, ""),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_chat_refuses_what_it_cannot_do_naming_the_field(body, expected):
    assert expected in [loc for loc, _ in _errors(ChatCompletionRequest, body)]


def test_chat_messages_are_typed():
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    assert req.messages[0].role == "user" and req.token_limit is None
    assert ("messages.0.role", "literal_error") in _errors(
        ChatCompletionRequest, {"messages": [{"role": "robot", "content": "hi"}]}
    )
    assert ("messages", "too_short") in _errors(ChatCompletionRequest, {"messages": []})


def test_response_and_error_shapes():
    resp = ClassifyResponse(model="m", results=[[{"label": "pos", "score": 0.9}]], batch_size=3)
    assert resp.model_dump()["results"][0][0] == {"label": "pos", "score": 0.9}
    err = ErrorResponse.model_validate({"error": {"message": "m", "type": "t", "code": 422}})
    assert err.model_dump(exclude_none=True) == {"error": {"message": "m", "type": "t", "code": 422}}
