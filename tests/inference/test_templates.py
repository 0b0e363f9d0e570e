"""Chat prompt rendering: the tokenizer's template when it has one, else the documented fallback."""

from __future__ import annotations

import pytest

from inference.errors import InvalidRequest
from inference.templates import render_chat


class _NoTemplate:
    chat_template = None


class _WithTemplate:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, *, tokenize, add_generation_prompt):
        assert not tokenize
        assert add_generation_prompt
        return "|".join(f"<{m['role']}>{m['content']}" for m in messages) + "|<assistant>"


def test_model_without_template_gets_role_tagged_transcript_without_examples():
    prompt = render_chat(
        _NoTemplate(), [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    )
    assert prompt == "System: Be terse.\nUser: Hi\nAssistant:"


def test_tokenizer_template_is_used_and_text_parts_are_joined():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}
    ]
    assert render_chat(_WithTemplate(), messages) == "<user>Hello|<assistant>"


def test_developer_role_is_rendered_as_system():
    assert render_chat(_NoTemplate(), [{"role": "developer", "content": "x"}]).startswith("System: x")


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "wizard", "content": "x"}], [{"role": "user", "content": [{"type": "image_url"}]}]],
)
def test_bad_messages_are_refused_with_invalid_request(messages):
    with pytest.raises(InvalidRequest):
        render_chat(_NoTemplate(), messages)
