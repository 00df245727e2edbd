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
        ({"prompt": "p", "stream": True}, ("stream", "literal_error")),
        ({"prompt": "p", "temperature": 2.5}, ("temperature", "less_than_equal")),
        ({"prompt": "p", "top_p": 0}, ("top_p", "greater_than")),
        ({"prompt": "p", "max_tokens": 0}, ("max_tokens", "greater_than_equal")),
        ({"prompt": ["p"]}, ("prompt", "string_type")),
        ({"prompt": "p", "n": 2}, ("n", "extra_forbidden")),
    ],
)
def test_completion_rejects(body, expected):
    assert expected in _errors(CompletionRequest, body)


def test_chat_messages_are_typed():
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    assert req.messages[0].role == "user"
    assert ("messages.0.role", "literal_error") in _errors(
        ChatCompletionRequest, {"messages": [{"role": "robot", "content": "hi"}]}
    )
    assert ("messages", "too_short") in _errors(ChatCompletionRequest, {"messages": []})


def test_response_and_error_shapes():
    resp = ClassifyResponse(model="m", results=[[{"label": "pos", "score": 0.9}]], batch_size=3)
    assert resp.model_dump()["results"][0][0] == {"label": "pos", "score": 0.9}
    err = ErrorResponse.model_validate({"error": {"message": "m", "type": "t", "code": 422}})
    assert err.model_dump(exclude_none=True) == {"error": {"message": "m", "type": "t", "code": 422}}
