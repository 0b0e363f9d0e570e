"""drf-spectacular for `/v1`: the API key as a bearer scheme, the bodies as the parser reads them."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from inference.protocol import request_schema
from inference.protocol.fields import Field


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "portal.api.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key: sk-<prefix>-<secret>."}


class OpenAIViewSchema(AutoSchema):
    """A `/v1` operation: its JSON body is required (a POST without one is a 400).

    drf-spectacular leaves a body given as a raw schema optional, and a client
    generated from the schema would then believe an empty POST is valid.
    """

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None and "requestBody" in operation:
            operation["requestBody"]["required"] = True
        return operation


def body_schema(table: dict[str, Field]) -> dict[str, Any]:
    """The body of a `/v1` operation, from the parser's declarations.

    A null field is read as absent, so every optional field is nullable (as
    in OpenAI's own schema). Fields not listed are refused by our workers (a
    remote endpoint behind the portal may take its own), so none is allowed.
    """
    return {**nullable_optionals(request_schema(table)), "additionalProperties": False}


def nullable_optionals(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (an object) with its optional properties nullable: our parsers read null as absent.

    An `anyOf`/`oneOf` branch that requires a property (one of `text` or
    `texts`) asks for it as declared, not null: null would not count.
    """
    declared = schema.get("properties", {})
    if not declared:
        return schema
    required = set(schema.get("required", ()))
    properties = {name: value if name in required else _nullable(value) for name, value in declared.items()}
    out = {**schema, "properties": properties}
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = [_pinned(branch, declared) for branch in schema[key]]
    return out


def _pinned(branch: Any, declared: dict[str, Any]) -> Any:
    names = (
        [name for name in branch.get("required", ()) if name in declared] if isinstance(branch, dict) else []
    )
    if not names:
        return branch
    return {
        **branch,
        "properties": {**{name: declared[name] for name in names}, **branch.get("properties", {})},
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "enum" in schema:  # OpenAPI 3.0: a nullable enum lists null too
        return {**schema, "nullable": True, "enum": [*schema["enum"], None]}
    return {**schema, "nullable": True}
