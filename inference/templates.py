"""Chat prompts: the tokenizer's own chat template, or a plain documented fallback.

A model is prompted in the format it was trained on, which its tokenizer's
chat template describes. A model without one (a base model, an old folder)
gets a simple role-tagged transcript ending in an open assistant turn:

    System: You are terse.
    User: Hi
    Assistant:

No few-shot examples are ever injected: they would cost context and change
answers in ways the client did not ask for.
"""

from __future__ import annotations

from typing import Any

from inference.errors import InvalidRequest

ROLES = ("system", "developer", "user", "assistant", "tool")


def message_text(message: dict[str, Any]) -> str:
    """The text of one OpenAI message; content may be a string or a list of text parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest("Only text content parts are supported.", field="messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise InvalidRequest("Message content must be a string or a list of parts.", field="messages")


def normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Check roles and flatten content so every template sees plain strings."""
    if not messages:
        raise InvalidRequest("'messages' must not be empty.", field="messages")
    out = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise InvalidRequest(f"Unknown message role {role!r}.", field="messages")
        # Many templates know only "system"; "developer" is OpenAI's newer name for it.
        out.append({"role": "system" if role == "developer" else role, "content": message_text(message)})
    return out


def fallback_prompt(messages: list[dict[str, str]]) -> str:
    """Render the role-tagged transcript used when a tokenizer has no chat template."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """Render `messages` into a prompt string that ends where the assistant's reply begins."""
    normalised = normalise_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(normalised, tokenize=False, add_generation_prompt=True))
    return fallback_prompt(normalised)
