"""Input and output serializers of the OpenAI-compatible API.

They document the API in its OpenAPI schema. Request bodies are checked by
the relay (`portal/gateway/prepare.py`), the one validator behind the OpenAI
API, the signed API and the chat page; tests/api/test_validation.py holds the
two to the same answers.
"""

from __future__ import annotations

from rest_framework import serializers


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool", "developer"])
    content = serializers.JSONField(required=False, allow_null=True, help_text="A string or content parts.")
    name = serializers.CharField(required=False)


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False, default=False)


class SamplingSerializer(serializers.Serializer):
    """Sampling fields shared by chat and text completions, vLLM extras included."""

    model = serializers.CharField(max_length=200)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=16)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    stop = serializers.JSONField(required=False, allow_null=True, help_text="A string or up to 16 strings.")
    seed = serializers.IntegerField(required=False, allow_null=True)
    presence_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    top_k = serializers.IntegerField(required=False, allow_null=True, min_value=-1)
    min_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    repetition_penalty = serializers.FloatField(required=False, allow_null=True, min_value=0.01)
    ignore_eos = serializers.BooleanField(required=False, allow_null=True)
    stop_token_ids = serializers.ListField(child=serializers.IntegerField(min_value=0), required=False)
    user = serializers.CharField(required=False, allow_blank=True)


class ChatCompletionRequestSerializer(SamplingSerializer):
    messages = MessageSerializer(many=True, allow_empty=False)


class CompletionRequestSerializer(SamplingSerializer):
    prompt = serializers.JSONField(help_text="A string or a list of strings.")


class EmbeddingRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    input = serializers.JSONField(help_text="A string or a list of strings.")
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False)
    user = serializers.CharField(required=False, allow_blank=True)


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


class EmbeddingDataSerializer(serializers.Serializer):
    object = serializers.CharField()
    index = serializers.IntegerField()
    embedding = serializers.ListField(child=serializers.FloatField())


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
