"""Chat prompts: the tokenizer's own chat template, or a plain documented fallback.

A model is prompted in the format it was trained on, which its tokenizer's
chat template describes. A model without one (a base model, an old folder)
gets a simple role-tagged transcript ending in an open assistant turn:

    System: You are terse.
    User: Hi
    Assistant:

No few-shot examples are ever injected: they would cost context and change
answers in ways the client did not ask for.

Messages arrive checked and flattened by the request parser
(`inference.protocol.messages`): string content, roles system, user,
assistant and tool.

Tools go to templates that know them (`tools` appears in the template) as
`apply_chat_template(tools=...)`. Other templates get them in a system
message that describes each function and asks for calls as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the Hermes
convention, which `inference.protocol.tools.extract_calls` reads back);
earlier calls in the conversation are written the same way.
"""

from __future__ import annotations

import json
from typing import Any

TOOLS_PREAMBLE = (
    "You can call functions. Their signatures are in <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with only "
    '<tool_call>{{"name": <function name>, "arguments": <arguments object>}}</tool_call>.'
)


def fallback_prompt(messages: list[dict[str, Any]]) -> str:
    """Render the role-tagged transcript used when a tokenizer has no chat template."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def tools_in_text(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with the tools described in a system message and earlier calls as text."""
    listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    preamble = TOOLS_PREAMBLE.format(tools=listing)
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message["content"]
        for call in message.get("tool_calls", ()):
            payload = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
            content += f"<tool_call>{json.dumps(payload, ensure_ascii=False)}</tool_call>"
        out.append({"role": message["role"], "content": content})
    if out and out[0]["role"] == "system":
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{preamble}"}
    else:
        out.insert(0, {"role": "system", "content": preamble})
    return out


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> str:
    """Render `messages` into a prompt string that ends where the assistant's reply begins."""
    template = getattr(tokenizer, "chat_template", None)
    if tools and template and "tools" in template:
        return str(
            tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        )
    if tools:
        messages = tools_in_text(messages, tools)
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if template:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return fallback_prompt(messages)
