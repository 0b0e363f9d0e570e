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

A template is rendered as transformers renders it (`render_template`: the same
sandboxed Jinja environment, filters and globals), so that a tokenizer read
without transformers (`inference.tokenizer`) prompts exactly as its own does.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


def render_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **variables: str,
) -> str:
    """A chat template rendered as transformers' `apply_chat_template(tokenize=False)` renders it.

    `variables` are the tokenizer's named special tokens (`bos_token`, `eos_token`…).
    """
    return str(
        _compiled(template).render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    )


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` marks the assistant's part for training: here, its text."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace without underscore names, as transformers' (no path to CPython's internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own signature trick: `namespace(self=…)` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"A chat template cannot set {name!r} on a namespace.")


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which a prompt must not see.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=16)
def _compiled(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    environment.globals["dict"] = _Dict()
    environment.globals["namespace"] = _Namespace
    return environment.from_string(template)
