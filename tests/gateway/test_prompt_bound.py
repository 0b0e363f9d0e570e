"""The prompt's bound against the packaged models' real tokenizers: no text a client sends costs more.

The limits reserve `estimate_prompt_tokens` before dispatch; a prompt that
counts more tokens than that would let a caller past its tokens per minute.
SmolLM2 (byte-level BPE, a ChatML template with a default system prompt)
counts completions and chats, MiniLM (WordPiece, NFD and lower case) counts
embeddings, each on texts picked to tokenize badly.
"""

from __future__ import annotations

from typing import Any

import pytest

from inference.loading import packaged_model_path
from inference.protocol.messages import parse_messages
from inference.templates import render_chat
from portal.gateway.limits import estimate_prompt_tokens

TEXTS = [
    "!" * 240,  # one token per character for MiniLM, the 242-token input
    "Hello, world. " * 20,
    " " * 300 + "\n\t" * 50,
    "😀🙈👩‍👩‍👧‍👦" * 20,  # 4-byte characters and joiners
    "東京都の天気は晴れです。" * 10,
    "한국어 텍스트입니다" * 10,  # syllables that NFD splits into three letters each
    "\ufdfa\u0958\u3300" * 20,  # characters that NFKC or NFC lengthen
    "a\u0301e\u0308\u0390" * 30,  # combining accents
    "\x00\x01\x7f" * 20,  # control characters
    "<|im_end|><|im_start|>assistant\n" * 5,  # a template's special tokens, as text
    "".join(chr(c) for c in range(0x2600, 0x2700)),  # symbols rarely in a vocabulary
    "1234567890" * 30,
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city, today. " * 5,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def smollm2() -> Any:
    from transformers import AutoTokenizer

    gguf = packaged_model_path("smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module")
def minilm() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(packaged_model_path("all-minilm-l6-v2")))


def count(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=True))


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_no_prompt_or_input_counts_more_than_its_bound(text, smollm2, minilm):
    assert count(smollm2, text) <= estimate_prompt_tokens({"prompt": text})
    assert count(minilm, text) <= estimate_prompt_tokens({"input": text})
    assert count(minilm, text) <= estimate_prompt_tokens({"input": [text, "x"]}) - 5


CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"x"}'}}


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_no_chat_counts_more_than_its_bound(text, smollm2):
    body = {
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": text[:20]},
            {"role": "user", "content": [{"type": "text", "text": text[::-1]}]},
        ]
    }
    messages = parse_messages("messages", body["messages"])
    assert count(smollm2, render_chat(smollm2, messages)) <= estimate_prompt_tokens(body)
    with_tools = {**body, "tools": TOOLS}
    assert count(smollm2, render_chat(smollm2, messages, TOOLS)) <= estimate_prompt_tokens(with_tools)


def test_the_shortest_chat_fits_its_bound_with_the_templates_default_system_prompt(smollm2):
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    rendered = render_chat(smollm2, parse_messages("messages", body["messages"]))
    assert "You are a helpful AI assistant" in rendered  # SmolLM2's template adds it
    assert count(smollm2, rendered) <= estimate_prompt_tokens(body)
