"""Response serializers of the OpenAI-compatible API, for its OpenAPI schema.

Request bodies are documented from the parser's own field declarations
(`inference.protocol.request_schema`), so the schema says what is checked.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


class MessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_null=True)
    tool_calls = serializers.ListField(child=serializers.DictField(), required=False)


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField(required=False)
    total_tokens = serializers.IntegerField()


class ChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = MessageSerializer(required=False)
    text = serializers.CharField(required=False)
    finish_reason = serializers.CharField(allow_null=True)


class CompletionResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="chat.completion or text_completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChoiceSerializer(many=True)
    usage = UsageSerializer()


@extend_schema_field(
    {
        "oneOf": [
            {"type": "array", "items": {"type": "number"}},
            {"type": "string", "format": "byte", "description": "encoding_format base64: float32 bytes."},
        ]
    }
)
class EmbeddingField(serializers.JSONField):
    """A vector: a list of floats, or base64 of its float32 bytes."""


class EmbeddingDataSerializer(serializers.Serializer):
    object = serializers.CharField()
    index = serializers.IntegerField()
    embedding = EmbeddingField()


class EmbeddingResponseSerializer(serializers.Serializer):
    object = serializers.CharField()
    model = serializers.CharField()
    data = EmbeddingDataSerializer(many=True)  # type: ignore[assignment]
    usage = UsageSerializer()


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
    root = serializers.CharField(  # type: ignore[assignment]
        required=False, help_text="The served model an alias points to."
    )


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField()
    data = ModelSerializer(many=True)  # type: ignore[assignment]


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
