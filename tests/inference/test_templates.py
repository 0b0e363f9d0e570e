"""Chat prompt rendering: the tokenizer's template when it has one, else the documented fallback."""

from __future__ import annotations

from typing import Any

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


def test_tokenizer_template_is_used():
    messages = [{"role": "user", "content": "Hello"}]
    assert render_chat(_WithTemplate(), messages) == "<user>Hello|<assistant>"


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_tools_go_to_a_template_that_knows_them():
    class _ToolTemplate:
        chat_template = "{% if tools %}{{ tools }}{% endif %}"

        def apply_chat_template(self, messages, *, tools, tokenize, add_generation_prompt):
            return f"tools={[t['function']['name'] for t in tools]} {messages[-1]['content']}"

    prompt = render_chat(_ToolTemplate(), [{"role": "user", "content": "Hi"}], [WEATHER])
    assert prompt == "tools=['get_weather'] Hi"


def test_other_templates_get_tools_and_earlier_calls_as_text():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    prompt = render_chat(_NoTemplate(), messages, [WEATHER])
    assert prompt.startswith("System: Be terse.\n\nYou can call functions.")
    assert '{"name": "get_weather", "parameters": {"type": "object"}}' in prompt
    assert (
        'Assistant: <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    )
    assert prompt.endswith("Tool: sunny\nAssistant:")
