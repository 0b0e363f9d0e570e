"""The embedding pipeline: texts in, one vector per text out (in the order given)."""

from __future__ import annotations

from typing import Any

from portal.gateway.prepare import EMBEDDING
from portal.signed.pipelines.base import ParamsRefused, PipelineContext, optional_string
from portal.signed.pipelines.relayed import Relayed, call_relay, default_model
from registry.models import ModelTask

MAX_TEXTS = 256


class EmbeddingPipeline(Relayed):
    path = "embedding"
    data_schema = {
        "type": "object",
        "description": "`texts`, or one `text`. Other keys are ignored.",
        "properties": {
            "texts": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TEXTS,
                "items": {"type": "string", "minLength": 1},
                "description": "The texts to embed; when given, text is not read.",
            },
            "text": {"type": "string", "pattern": r"\S", "description": "One text to embed."},
            "model": {
                "type": "string",
                "pattern": r"\S",
                "description": "A served embedding model or alias; may be left out when one is served.",
            },
        },
        "anyOf": [{"required": ["texts"]}, {"required": ["text"]}],
        "example": {"texts": ["hello", "世界"]},
    }
    result_schema = {
        "type": "object",
        "required": ["vectors", "dimensions", "model", "usage"],
        "properties": {
            "vectors": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "number"}},
                "description": "One vector per text, in the order given.",
            },
            "dimensions": {"type": "integer", "minimum": 0},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
            },
        },
    }

    def api_entry(self, data: dict[str, Any]) -> dict[str, Any]:
        texts = data.get("texts")
        if texts is None:
            text = optional_string(data, "text")
            if text is None:
                raise ParamsRefused("texts (a list of strings) or text is required")
            texts = [text]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise ParamsRefused("texts must be a non-empty list of non-empty strings")
        if len(texts) > MAX_TEXTS:
            raise ParamsRefused(f"at most {MAX_TEXTS} texts per request")
        params: dict[str, Any] = {"input": texts}
        model = optional_string(data, "model")
        if model:
            params["model"] = model
        return params

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        body = {"model": params.get("model") or await default_model(ModelTask.EMBED), **params}
        result = await call_relay(EMBEDDING, body, context=context)
        rows = sorted(result.get("data") or [], key=lambda row: row.get("index", 0))
        vectors = [row.get("embedding") for row in rows]
        if len(vectors) != len(params["input"]):
            raise ValueError(f"{len(vectors)} vectors for {len(params['input'])} texts")
        return {
            "vectors": vectors,
            "dimensions": len(vectors[0]) if vectors else 0,
            "model": result.get("model", body["model"]),
            "usage": result.get("usage") or {},
        }
