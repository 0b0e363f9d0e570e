"""Structured outputs as llama.cpp GBNF grammars, for a llama.cpp built without llguidance.

The native build (see `llamacpp_build`) has no llguidance, so a `%llguidance`
Lark grammar would fail there. Every `Guide` kind becomes GBNF instead:

- json_schema, json_object: llama.cpp's own json-schema-to-grammar (through
  xllamacpp), with its free whitespace cut to at most one space (with free
  whitespace SmolLM2 spent its tokens on newlines, as under llguidance);
- choice: an alternation of literals;
- regex: Python's own regex parser, its tree written as GBNF; what GBNF cannot
  say (look-around, back-references, word boundaries, flags) is refused;
- grammar: a GBNF grammar (`rule ::= ...`) is passed as it is and parsed by
  llama.cpp; a Lark grammar is refused (only llguidance reads Lark).

Every refusal is an InvalidRequest naming the guide's field: a request is
constrained or refused, never generated without its grammar.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from typing import Any

from inference.errors import InvalidRequest
from inference.sampling import Guide

# Python's regex parser (private modules, stable since 3.11, without type stubs): its tree is what
# we translate.
sre: Any = importlib.import_module("re._constants")
sre_parse: Any = importlib.import_module("re._parser")

SPACE_RULE = re.compile(r"^space ::= .*$", re.MULTILINE)
CATEGORIES = {
    sre.CATEGORY_DIGIT: "0-9",
    sre.CATEGORY_WORD: "a-zA-Z0-9_",
    sre.CATEGORY_SPACE: " \\t\\n\\r\\x0b\\x0c",
}
NEGATED = {
    sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT,
    sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
    sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE,
}


class Unsupported(ValueError):
    pass


def gbnf_text(guide: Guide, schema_to_grammar: Callable[[Any], str]) -> str:
    """`guide` as a GBNF grammar with a `root` rule; InvalidRequest naming its field if it cannot be."""
    try:
        if guide.kind in ("json_schema", "json_object"):
            schema = json.loads(guide.spec) if guide.kind == "json_schema" else {"type": "object"}
            if not isinstance(schema, dict):
                raise Unsupported("a JSON schema is a JSON object")
            return SPACE_RULE.sub('space ::= " "?', schema_to_grammar(schema))
        if guide.kind == "choice":
            choices = json.loads(guide.spec)
            if not choices or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise Unsupported("choices are a non-empty list of strings")
            return "root ::= " + " | ".join(literal(c) for c in choices)
        if guide.kind == "regex":
            return "root ::= " + regex_gbnf(guide.spec)
        if guide.kind == "grammar":
            if "::=" not in guide.spec:
                raise Unsupported("this build of llama.cpp reads GBNF grammars (root ::= ...), not Lark")
            return guide.spec
    except (ValueError, re.error, RuntimeError) as exc:  # json.JSONDecodeError and Unsupported included
        what = {"json_schema": "JSON schema", "choice": "choice list"}.get(guide.kind, guide.kind)
        detail = (str(exc).strip().splitlines() or ["it cannot be used"])[0]
        raise InvalidRequest(f"'{guide.field}' has an invalid {what}: {detail}", field=guide.field) from exc
    raise InvalidRequest(f"Unknown structured output kind {guide.kind!r}.", field=guide.field)


def literal(text: str) -> str:
    """A GBNF string literal."""
    return '"' + "".join(_char(c, '"\\') for c in text) + '"'


def regex_gbnf(pattern: str) -> str:
    """A regular expression (matched whole, as guided_regex is) as one GBNF expression."""
    tree = sre_parse.parse(pattern)
    if tree.state.flags & ~(sre.SRE_FLAG_UNICODE):
        raise Unsupported("regex flags are not supported on this build")
    return _sequence(list(tree))


def _sequence(items: list[tuple[Any, Any]]) -> str:
    parts: list[str] = []
    run = ""  # consecutive literal characters become one string
    for op, arg in items:
        if op is sre.LITERAL:
            run += chr(arg)
            continue
        if run:
            parts.append(literal(run))
            run = ""
        parts.append(_item(op, arg))
    if run:
        parts.append(literal(run))
    parts = [p for p in parts if p]
    if not parts:
        return '""'
    return parts[0] if len(parts) == 1 else "(" + " ".join(parts) + ")"


def _item(op: Any, arg: Any) -> str:
    if op is sre.LITERAL:
        return literal(chr(arg))
    if op is sre.NOT_LITERAL:
        return f"[^{_char(chr(arg), CLASS_SPECIAL)}]"
    if op is sre.ANY:
        return "[^\\n]"
    if op is sre.IN:
        return _char_class(arg)
    if op is sre.BRANCH:
        return "(" + " | ".join(_sequence(list(branch)) for branch in arg[1]) + ")"
    if op is sre.SUBPATTERN:
        _group, add_flags, del_flags, sub = arg
        if add_flags or del_flags:
            raise Unsupported("inline regex flags are not supported on this build")
        return _sequence(list(sub))
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, sub = arg
        return _sequence(list(sub)) + _repeat(low, high)
    if op is sre.AT and arg in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING, sre.AT_END, sre.AT_END_STRING):
        return ""  # the whole output matches: anchors say nothing more
    raise Unsupported(f"{str(op).lower()} is not supported in a regex on this build")


def _repeat(low: int, high: int) -> str:
    if high == sre.MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


CLASS_SPECIAL = "]\\^-["


def _char_class(items: list[tuple[Any, Any]]) -> str:
    negate = bool(items) and items[0][0] is sre.NEGATE
    body = []
    for op, arg in items[1:] if negate else items:
        if op is sre.LITERAL:
            body.append(_char(chr(arg), CLASS_SPECIAL))
        elif op is sre.RANGE:
            body.append(f"{_char(chr(arg[0]), CLASS_SPECIAL)}-{_char(chr(arg[1]), CLASS_SPECIAL)}")
        elif op is sre.CATEGORY and arg in CATEGORIES:
            body.append(CATEGORIES[arg])
        elif op is sre.CATEGORY and arg in NEGATED and len(items) == 1:
            return f"[^{CATEGORIES[NEGATED[arg]]}]"  # \D, \W, \S alone
        else:
            raise Unsupported(f"{str(op).lower()} {arg} is not supported in a character class on this build")
    return ("[^" if negate else "[") + "".join(body) + "]"


def _char(c: str, special: str) -> str:
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if c in escapes:
        return escapes[c]
    if c in special and c != "^":
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F or c == "^":  # llama.cpp knows no \^ escape
        return f"\\x{ord(c):02x}"
    return c
