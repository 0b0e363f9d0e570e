"""The request body behind each chat answer: the page's settings, checked by the shared parser.

The page sends its settings as form values: numbers may arrive as strings and
a JSON schema as the text of its textarea. They are coerced to what the body
holds, then `inference.protocol.parse_chat(strict=True)` judges the body that
would be sent, so the page obeys the workers' rules, not a copy of them, and a
refusal names the field as a 400 from /v1 does. The page may set the sampling
fields and `response_format`; the rest of the body (model, messages, stream)
is the consumer's to fill.
"""

from __future__ import annotations

import json
from typing import Any

from inference.errors import InvalidRequest
from inference.protocol import CHAT_FIELDS, parse_chat
from inference.protocol.fields import SAMPLING
from portal.chat.models import AnswerFormat
from portal.chat.services import ChatError

PAGE_FIELDS = frozenset({*SAMPLING, "response_format"})
JSON_FORMATS = frozenset({"json_object", "json_schema"})
# The model and the conversation come from the consumer, and the relay checks them with the
# whole body; stand-ins fill these required fields while the page's own fields are judged.
STAND_IN_MODEL = "chat-page"
STAND_IN_MESSAGES = [{"role": "user", "content": "…"}]


def request_body(*, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """Return the OpenAI streaming request body for one answer."""
    return {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        **params,
    }


def page_params(raw: Any) -> dict[str, Any]:
    """Return the body fields the page set, coerced from form values; ChatError naming a bad one."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ChatError("'params' must be an object.", code="invalid_param", param="params")
    params: dict[str, Any] = {}
    for name, value in raw.items():
        if name in CHAT_FIELDS and name not in PAGE_FIELDS:
            raise ChatError(f"'{name}' is not set from the chat page.", code="invalid_param", param=name)
        value = _from_form(name, value)
        if value is not None:
            params[name] = value
    try:
        body = request_body(model=STAND_IN_MODEL, messages=STAND_IN_MESSAGES, params=params)
        parse_chat(body, strict=True)
    except InvalidRequest as exc:
        raise ChatError(str(exc), code="invalid_param", param=exc.field) from None
    return params


def answer_format(params: dict[str, Any]) -> str:
    """Whether checked `params` constrain the answer to JSON, which the page shows as plain text."""
    response_format = params.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    return AnswerFormat.JSON if kind in JSON_FORMATS else AnswerFormat.TEXT


def _from_form(name: str, value: Any) -> Any:
    """The value a form field means: None for an empty input, numbers and schemas parsed from text.

    Text that does not parse is kept as sent, for the parser to refuse naming the field.
    """
    if value == "":
        return None
    if name == "response_format":
        return _schema_from_form(value)
    kind = CHAT_FIELDS[name].schema.get("type") if name in CHAT_FIELDS else None
    if not isinstance(value, str) or kind not in ("number", "integer"):
        return value
    try:
        return int(value) if kind == "integer" else float(value)
    except ValueError:
        return value


def _schema_from_form(value: Any) -> Any:
    if not isinstance(value, dict) or not isinstance(value.get("json_schema"), dict):
        return value
    spec = value["json_schema"]
    schema = spec.get("schema")
    if not isinstance(schema, str):
        return value
    try:
        parsed = json.loads(schema)
    except ValueError:
        return value
    except RecursionError:  # the parser would raise it too, unnamed
        field = "response_format.json_schema.schema"
        raise ChatError(f"'{field}' is nested too deeply.", code="invalid_param", param=field) from None
    return {**value, "json_schema": {**spec, "schema": parsed}}
