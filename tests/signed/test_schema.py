"""The signed API in /api/schema/: one operation per pipeline, each `data` as its pipeline declares it.

The declarations are held to the pipelines: every `data` the published schema
allows is accepted by the pipeline (schemathesis generates them), bad ones
are refused by both, and the replies the endpoint sends match the published
reply schemas.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import jsonschema
import pytest
import schemathesis
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode

from inference.protocol.structured import FIELDS as STRUCTURED_FIELDS
from portal.api.schema import nullable_optionals
from portal.gateway.gateway import current
from portal.signed.loader import get_pipelines
from portal.signed.pipelines.base import ParamsRefused
from portal.signed.policies import signature_policies
from portal.signed.schema import UNDECLARED
from portal.signed.views import SignedView
from registry.models import ModelTask, ServedModel
from tests.gateway.conftest import add_worker, chat_result, served_model, upstream
from tests.signed.conftest import App, post

__all__ = ["served_model", "upstream"]
BUILT_IN = ["chat", "embedding", "echo"]


def published() -> dict[str, Any]:
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return dict(json.loads(response.content))


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow a `$ref` (or an allOf of one, as drf-spectacular writes a described enum)."""
    if "allOf" in schema and len(schema["allOf"]) == 1:
        schema = schema["allOf"][0]
    if "$ref" in schema:
        return dict(document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    return schema


def operation_schemas(document: dict[str, Any], pipeline: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request and the reply schemas of `POST /api/<pipeline>`, resolved."""
    operation = document["paths"][f"/api/{pipeline}"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    reply = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return resolve(document, request), resolve(document, reply)


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    """A validator of `schema` whose `$ref`s resolve in `document` (OpenAPI 3.0 is draft 4)."""
    return jsonschema.Draft4Validator({**schema, "components": document["components"]})


def test_every_registered_pipeline_declares_its_data_and_its_result() -> None:
    pipelines = get_pipelines()

    assert sorted(pipelines) == sorted(BUILT_IN)
    for name, pipeline in pipelines.items():
        for declared in (pipeline.data_schema, pipeline.result_schema):
            assert declared.get("type") == "object", name
            jsonschema.Draft4Validator.check_schema(declared)
        # A result must require a field, so that the reply's result and refusal shapes stay apart.
        assert pipeline.result_schema.get("required"), name
        # The example the docs page shows is one the pipeline takes.
        example = pipeline.data_schema["example"]
        jsonschema.Draft4Validator(pipeline.data_schema).validate(example)
        pipeline.api_entry(example)


def test_the_schema_lists_one_signed_operation_per_pipeline_with_its_declarations() -> None:
    document = published()

    validate_schema(document)
    assert "/api/{pipeline}" not in document["paths"]
    assert "/v1/chat/completions" in document["paths"]
    sign_types = [policy.sign_type for policy in signature_policies(SignedView().get_authenticators())]
    for name, pipeline in get_pipelines().items():
        operation = document["paths"][f"/api/{name}"]["post"]
        request, reply = operation_schemas(document, name)

        assert operation["operationId"] == f"signed_{name}"
        assert operation["tags"] == ["signed"]
        assert operation["requestBody"]["required"] is True
        assert request["properties"]["data"] == nullable_optionals(pipeline.data_schema)  # null: absent
        assert resolve(document, request["properties"]["signType"])["enum"] == sign_types
        assert reply["properties"]["data"]["oneOf"][0]["allOf"][0] == pipeline.result_schema


@pytest.mark.django_db
def test_the_schema_lists_the_pipelines_configured_when_it_is_built(settings) -> None:
    settings.SIGNED_PIPELINES = [
        "portal.signed.pipelines.echo.EchoPipeline",
        "tests.signed.fake_pipelines.SleepPipeline",
    ]

    document = published()

    assert sorted(p for p in document["paths"] if p.startswith("/api/") and p != "/api/schema/") == [
        "/api/echo",
        "/api/sleep",
    ]
    request, _ = operation_schemas(document, "sleep")
    assert request["properties"]["data"] == UNDECLARED


@pytest.mark.parametrize("pipeline", BUILT_IN)
def test_every_data_the_schema_allows_is_accepted_by_its_pipeline(pipeline: str) -> None:
    schema = schemathesis.openapi.from_dict(published())
    operation = next(
        op
        for op in (result.ok() for result in schema.get_all_operations())  # type: ignore[union-attr]
        if op.label == f"POST /api/{pipeline}"
    )
    entry = get_pipelines()[pipeline].api_entry
    seen: list[dict[str, Any]] = []

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def accepted(case: schemathesis.Case) -> None:
        assert isinstance(case.body, dict)
        data = case.body["data"]
        assert isinstance(data, dict)
        # Cross-field rules a draft-4 schema does not encode: one structured-output field at most.
        assume(sum(key in data for key in STRUCTURED_FIELDS) <= 1)
        seen.append(data)
        try:
            entry(data)
        except ParamsRefused as exc:
            raise AssertionError(f"the schema allows {data!r}, the pipeline refuses: {exc}") from exc

    accepted()
    assert len(seen) > 25
    assert len({json.dumps(d, sort_keys=True) for d in seen}) > 10  # varied bodies, not one repeated


REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("chat", {}),
    ("chat", {"temperature": 0}),
    ("chat", {"prompt": "  "}),
    ("chat", {"text": ""}),
    ("chat", {"messages": []}),
    ("chat", {"messages": [{"role": "robot", "content": "hi"}]}),
    ("chat", {"messages": [{"role": "user", "content": 5}]}),
    ("chat", {"messages": ["hi"]}),
    ("chat", {"prompt": "hi", "max_tokens": 0}),
    ("chat", {"prompt": "hi", "temperature": -1}),
    ("chat", {"prompt": "hi", "temperature": True}),
    ("chat", {"prompt": "hi", "top_k": -2}),
    ("chat", {"prompt": "hi", "seed": 1.5}),
    ("chat", {"prompt": "hi", "stop": [1]}),
    ("chat", {"prompt": "hi", "model": " "}),
    ("embedding", {}),
    ("embedding", {"texts": []}),
    ("embedding", {"texts": [""]}),
    ("embedding", {"texts": ["a"] * 257}),
    ("embedding", {"text": 5}),
    ("embedding", {"texts": ["a"], "model": ""}),
]


@pytest.mark.parametrize(("pipeline", "data"), REFUSED, ids=[f"{p}:{json.dumps(d)[:40]}" for p, d in REFUSED])
def test_data_the_pipeline_refuses_is_refused_by_the_schema_too(pipeline: str, data: dict[str, Any]) -> None:
    declared = get_pipelines()[pipeline]

    with pytest.raises(ParamsRefused):
        declared.api_entry(data)
    assert not jsonschema.Draft4Validator(declared.data_schema).is_valid(data)


def embeddings_result(request: httpx2.Request) -> httpx2.Response:
    texts = json.loads(request.content)["input"]
    rows = [{"object": "embedding", "index": i, "embedding": [0.6, 0.8]} for i in range(len(texts))]
    usage = {"prompt_tokens": 2, "total_tokens": 2}
    return httpx2.Response(200, json={"object": "list", "data": rows, "model": "mini", "usage": usage})


def chat_answer() -> httpx2.Response:
    return httpx2.Response(200, json=chat_result())


@pytest.fixture
async def workers(served_model, upstream) -> None:
    """The fake upstream (gateway tests' stand-in for workers) serving a chat and an embedding model."""
    embedder = await ServedModel.objects.acreate(name="mini", task=ModelTask.EMBED)
    await sync_to_async(add_worker)(served_model, "w1")
    await sync_to_async(add_worker)(embedder, "w2")
    upstream(lambda r: embeddings_result(r) if r.url.path.endswith("/embeddings") else chat_answer())


@pytest.fixture
async def _usage_written() -> AsyncIterator[None]:
    yield
    await current().usage.flush()


ANSWERED = [
    ("echo", {"text": "hi"}),
    ("chat", {"prompt": "hi", "model": "tiny"}),
    ("embedding", {"texts": ["a", "b"]}),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("workers", "_usage_written")
@pytest.mark.parametrize(("pipeline", "data"), ANSWERED)
async def test_replies_match_the_published_reply_schema(app: App, pipeline: str, data: dict) -> None:
    response = await AsyncClient().get("/api/schema/", {"format": "json"})
    document = json.loads(response.content)
    _, reply_schema = operation_schemas(document, pipeline)
    result_schema = get_pipelines()[pipeline].result_schema

    answered = await post(pipeline, app.body(data))
    refused = await post(pipeline, app.body(data, timestamp=1))

    assert answered["code"] == 0, answered
    assert refused["code"] == 9802
    validator(document, reply_schema).validate(answered)
    validator(document, reply_schema).validate(refused)
    jsonschema.Draft4Validator(result_schema).validate(
        {k: v for k, v in answered["data"].items() if k not in ("msg", "requestId")}
    )
