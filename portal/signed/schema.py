"""The signed API in the OpenAPI schema: one operation per pipeline, `data` as the pipeline declares it.

`POST /api/<pipeline>` is one route, but each pipeline takes its own `data`,
and OpenAPI ties a body to a path. So a drf-spectacular preprocessing hook
(`one_operation_per_pipeline`, in SPECTACULAR_SETTINGS) turns the route into
one endpoint per pipeline of SIGNED_PIPELINES, read when the schema is built,
and `SignedPipelineSchema` describes each: the envelope, whose signTypes are
those of the view's authentication classes, around the pipeline's
`data_schema`, and the reply around its `result_schema`.
"""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiResponse

from portal.api.schema import nullable_optionals
from portal.signed.envelope import CODE_MEANINGS, Code
from portal.signed.loader import get_pipelines
from portal.signed.pipelines.base import Pipeline
from portal.signed.policies import SignaturePolicy, signature_policies
from registry.models import APP_ID_PATTERN, APP_ID_RULE

PIPELINE_VARIABLE = "{pipeline}"
UNDECLARED: dict[str, Any] = {"type": "object", "description": "Not declared by the pipeline."}
# OpenAPI patterns are ECMAScript regexes: no \A or \Z.
APP_ID_JSON_PATTERN = APP_ID_PATTERN.replace(r"\A", "^").replace(r"\Z", "$")
REQUEST_ID_PATTERN = "^[0-9]{8}[0-9a-f]{32}$"

DESCRIPTION = """go-infer compatible signed request. The string to sign is every top-level key but \
`signData`, sorted by byte order, as `k=v&`, then `key=<secret>`; `data` is written as compact JSON \
with sorted keys (portal/signed/README.md has the details, `portal/signed/client.py` signs). \
The body is JSON, sent as `application/json` (or with no Content-Type); any other type is refused (9801).

The reply is always HTTP 200: `code` 0 is success, any other code a refusal whose `data.msg` says \
why. An exact replay of an accepted signature inside the timestamp window is refused (9804)."""

Endpoint = tuple[str, str, str, Any]


def one_operation_per_pipeline(endpoints: list[Endpoint], **kwargs: Any) -> list[Endpoint]:
    """Replace the signed route `/api/{pipeline}` by one endpoint per configured pipeline."""
    expanded: list[Endpoint] = []
    for path, path_regex, method, callback in endpoints:
        view_class = getattr(callback, "cls", None)
        # The signed view is the one documented by this module's schema (its module imports this one).
        signed = isinstance(getattr(view_class, "schema", None), SignedPipelineSchema)
        if view_class is None or not signed or PIPELINE_VARIABLE not in path:
            expanded.append((path, path_regex, method, callback))
            continue
        for name in get_pipelines():
            view = view_class.as_view(**callback.initkwargs, documented_pipeline=name)
            expanded.append((path.replace(PIPELINE_VARIABLE, name), path_regex, method, view))
    return expanded


class SignedPipelineSchema(AutoSchema):
    """Describe one signed operation: the envelope around the documented pipeline's declarations."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None:
            operation["requestBody"]["required"] = True  # drf-spectacular leaves a raw schema optional
        return operation

    def _pipeline(self) -> Pipeline | None:
        name = getattr(self.view, "documented_pipeline", "")
        return get_pipelines().get(name) if name else None

    def _name(self) -> str:
        pipeline = self._pipeline()
        return pipeline.path if pipeline else ""

    def get_operation_id(self) -> str:
        return "signed_" + (re.sub(r"\W", "_", self._name()) or "pipeline")

    def get_tags(self) -> list[str]:
        return ["signed"]

    def get_summary(self) -> str:
        pipeline = self._pipeline()
        return summary(pipeline) if pipeline else "Call a pipeline of the signed API."

    def get_description(self) -> str:  # type: ignore[override]
        return DESCRIPTION

    def get_auth(self) -> list[dict[str, Any]]:
        # The signature travels in the body, which OpenAPI's security schemes cannot describe:
        # the envelope's signType and signData say it.
        return []

    # drf-spectacular takes a raw schema per media type (and per status) where its annotation says
    # serializer: the ignores below are for that annotation.
    def get_request_serializer(self) -> dict[str, Any]:  # type: ignore[override]
        policies = signature_policies(self.view.get_authenticators())
        schema = request_schema(self._pipeline(), policies)
        return {"application/json": self._component("Request", schema).ref}

    def get_response_serializers(self) -> dict[int, OpenApiResponse]:  # type: ignore[override]
        reply = self._component("Reply", reply_schema(self._pipeline()))
        text = "Always HTTP 200, like go-infer: `code` says what happened, `success` is true for 0 only."
        return {200: OpenApiResponse(reply.ref, description=text)}

    def _component(self, suffix: str, schema: dict[str, Any]) -> ResolvedComponent:
        camel = "".join(part.capitalize() for part in re.split(r"\W|_", self._name()))
        name = f"Signed{camel}{suffix}"
        component = ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name, schema=schema)
        self.registry.register_on_missing(component)
        return component


def summary(pipeline: Pipeline) -> str:
    """The first line of the pipeline class's docstring, else of its module's."""
    doc = type(pipeline).__doc__ or sys.modules[type(pipeline).__module__].__doc__ or ""
    return doc.strip().partition("\n")[0] or f"The {pipeline.path} pipeline."


def _declared(schema: dict[str, Any]) -> dict[str, Any]:
    # A copy: drf-spectacular's hooks edit the document in place, never the pipeline's own.
    return copy.deepcopy(schema) if schema else dict(UNDECLARED)


def request_schema(pipeline: Pipeline | None, policies: tuple[SignaturePolicy, ...]) -> dict[str, Any]:
    """The request envelope with `data` as `pipeline` declares it; signType as `policies` accept it."""
    sign_types = "\n".join(f"- `{policy.sign_type}`: {policy.description}" for policy in policies)
    return {
        "type": "object",
        "description": "Extra top-level keys are allowed, and signed.",
        "required": ["appId", "signType", "timestamp", "data"],
        "properties": {
            "appId": {
                "type": "string",
                "pattern": APP_ID_JSON_PATTERN,
                "description": APP_ID_RULE,
                "example": "3EA25569454745D01219080B779F021F",
            },
            "version": {"type": "string", "enum": ["1"], "description": "Optional."},
            "signType": {
                "type": "string",
                "enum": [policy.sign_type for policy in policies],
                "description": sign_types,
            },
            "signData": {
                "type": "string",
                "description": "The signature; needed unless signType is plain.",
                "example": "ZjFkMmMz...",
            },
            "encType": {"type": "string", "description": "Optional; signed, not interpreted."},
            "timestamp": {
                "type": "integer",
                "description": "Unix seconds, within SIGNED_TIMESTAMP_WINDOW of the server's clock.",
                "example": 1767225600,
            },
            "data": nullable_optionals(_declared(pipeline.data_schema if pipeline else {})),
        },
    }


def reply_schema(pipeline: Pipeline | None) -> dict[str, Any]:
    """The reply envelope: `data` is the pipeline's result on code 0, else only `msg` and `requestId`."""
    result = _declared(pipeline.result_schema if pipeline else {})
    fields = {
        "msg": {"type": "string", "description": "success, or why the request was refused"},
        "requestId": {"type": "string", "pattern": REQUEST_ID_PATTERN},
    }
    always = {"type": "object", "required": ["msg", "requestId"], "properties": fields}
    success = {"description": "code 0: the pipeline's result", "allOf": [result, always]}
    refusal = {"description": "any other code", **always, "additionalProperties": False}
    # oneOf needs the result to require a field that a refusal lacks; else the two shapes overlap.
    data = {"oneOf" if result.get("required") else "anyOf": [success, refusal]}
    codes = "\n".join(f"- {int(code)}: {CODE_MEANINGS[code]}" for code in Code)
    return {
        "type": "object",
        "required": ["appId", "code", "success", "timestamp", "signType", "encType", "data"],
        "properties": {
            "appId": {"type": "string", "description": "Empty until the signature checks out."},
            "code": {"type": "integer", "enum": [int(code) for code in Code], "description": codes},
            "success": {"type": "boolean"},
            "timestamp": {"type": "integer", "description": "The server's time, unix seconds."},
            "signType": {"type": "string", "description": "Always plain: replies are not signed."},
            "encType": {"type": "string", "description": "Always plain."},
            "data": data,
        },
    }
