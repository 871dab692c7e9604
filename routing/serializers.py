"""Request parsing for the task API: every field checked, every limit enforced, before anything runs."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from core.errors import PayloadTooLarge
from inference.errors import InvalidInput
from inference.languages import to_nllb


def check_batch(texts: list[str], *, field: str = "texts") -> list[str]:
    """Count limit (400) and total size limit (413) of a batch request."""
    if len(texts) > settings.MODELGATE_MAX_BATCH_ITEMS:
        raise serializers.ValidationError(
            {field: f"{len(texts)} items; the limit is {settings.MODELGATE_MAX_BATCH_ITEMS} per request."}
        )
    total = sum(len(text) for text in texts)
    if total > settings.MODELGATE_MAX_BATCH_CHARACTERS:
        raise PayloadTooLarge(
            f"The {field} total {total} characters; the limit is {settings.MODELGATE_MAX_BATCH_CHARACTERS} per request."
        )
    return texts


class TextField(serializers.CharField):
    def __init__(self, **kwargs: Any):
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("max_length", 100_000)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        value = super().to_internal_value(data)
        if not value.strip():
            raise serializers.ValidationError("Must not be blank.")
        return value


class OneOrManyTexts(serializers.Serializer):
    """`text` or `texts`, exactly one of them."""

    text = TextField(required=False)
    texts = serializers.ListField(child=TextField(), required=False, allow_empty=False)
    model = serializers.CharField(required=False, default="auto", max_length=100)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("text" in attrs) == ("texts" in attrs):
            raise serializers.ValidationError("Give either text or texts.")
        attrs["many"] = "texts" in attrs
        attrs["texts"] = check_batch(attrs.pop("texts", None) or [attrs.pop("text")])
        return attrs


def language_code(value: str) -> str:
    try:
        to_nllb(value)
    except InvalidInput as exc:
        raise serializers.ValidationError(str(exc)) from None
    return value


class TranslateSerializer(OneOrManyTexts):
    target = serializers.CharField(max_length=20, validators=[language_code])
    source = serializers.CharField(max_length=20, required=False, validators=[language_code])


class DetectLanguageSerializer(OneOrManyTexts):
    top_k = serializers.IntegerField(required=False, default=1, min_value=1, max_value=20)


class ClassifySerializer(OneOrManyTexts):
    labels = serializers.ListField(
        child=serializers.CharField(max_length=500), required=False, min_length=2, max_length=100
    )


class RerankSerializer(serializers.Serializer):
    query = TextField(max_length=20_000)
    documents = serializers.ListField(child=TextField(max_length=50_000), allow_empty=False, max_length=1000)
    top_n = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    model = serializers.CharField(required=False, default="auto", max_length=100)

    def validate_documents(self, documents: list[str]) -> list[str]:
        if sum(len(d) for d in documents) > settings.MODELGATE_MAX_BATCH_CHARACTERS:
            raise PayloadTooLarge(f"The documents exceed {settings.MODELGATE_MAX_BATCH_CHARACTERS} characters in total.")
        return documents


class EmbeddingsSerializer(serializers.Serializer):
    """OpenAI's request: `input` is a string or a list of strings."""

    input = serializers.JSONField()
    model = serializers.CharField(required=False, default="auto", max_length=100)
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, default="float")
    user = serializers.CharField(required=False, max_length=200)

    def validate_input(self, value: Any) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts:
            raise serializers.ValidationError("A string or a non-empty list of strings.")
        if not all(isinstance(text, str) for text in texts):
            raise serializers.ValidationError("Token arrays are not accepted: send text.")
        if any(not text.strip() for text in texts):
            raise serializers.ValidationError("Inputs must not be blank.")
        return check_batch(texts, field="input")


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "developer"])
    content = serializers.JSONField()

    def validate_content(self, value: Any) -> str:
        # OpenAI allows a list of typed parts; text parts are joined, anything else is refused.
        if isinstance(value, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
                raise serializers.ValidationError("Only text content parts are supported.")
            value = "".join(p["text"] for p in value)
        if not isinstance(value, str) or not value.strip():
            raise serializers.ValidationError("Must be non-empty text.")
        return value


class ChatCompletionSerializer(serializers.Serializer):
    messages = ChatMessageSerializer(many=True, allow_empty=False)
    model = serializers.CharField(required=False, default="auto", max_length=100)
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, min_value=1)
    temperature = serializers.FloatField(required=False, default=1.0, min_value=0, max_value=2)
    stop = serializers.JSONField(required=False)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = serializers.DictField(required=False)
    n = serializers.IntegerField(required=False, default=1, min_value=1, max_value=1)
    user = serializers.CharField(required=False, max_length=200)

    def validate_stop(self, value: Any) -> list[str]:
        stops = [value] if isinstance(value, str) else value
        if stops is None:
            return []
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise serializers.ValidationError("A string or up to 4 non-empty strings.")
        return stops

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        limit = attrs.get("max_completion_tokens") or attrs.get("max_tokens") or 256
        if limit > settings.MODELGATE_MAX_OUTPUT_TOKENS:
            raise serializers.ValidationError(
                {"max_tokens": f"At most {settings.MODELGATE_MAX_OUTPUT_TOKENS} tokens may be asked for."}
            )
        attrs["limit"] = limit
        if sum(len(m["content"]) for m in attrs["messages"]) > settings.MODELGATE_MAX_BATCH_CHARACTERS:
            raise PayloadTooLarge(f"The messages exceed {settings.MODELGATE_MAX_BATCH_CHARACTERS} characters.")
        return attrs


class AudioSerializer(serializers.Serializer):
    file = serializers.FileField()
    model = serializers.CharField(required=False, default="auto", max_length=100)
    language = serializers.CharField(required=False, max_length=20)
    response_format = serializers.ChoiceField(choices=["json", "text", "verbose_json"], required=False, default="json")
    prompt = serializers.CharField(required=False, max_length=2000)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=1)


class IntentSerializer(serializers.Serializer):
    file = serializers.FileField()
    model = serializers.CharField(required=False, default="auto", max_length=100)
    top_k = serializers.IntegerField(required=False, default=3, min_value=1, max_value=20)


class FeedbackSerializer(serializers.Serializer):
    request_id = serializers.CharField(max_length=128)
    score = serializers.IntegerField(min_value=-1, max_value=1, help_text="-1 bad, 0 neutral, 1 good.")
    comment = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")


class InferenceRecordSerializer(serializers.Serializer):
    """A record as GET /v1/inferences/{id} shows it: what the record may leave empty is nullable in the schema."""

    id = serializers.UUIDField()
    request_id = serializers.CharField()
    task = serializers.CharField()
    model = serializers.CharField(source="model_slug")
    tier = serializers.CharField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    input_preview = serializers.CharField()
    output_preview = serializers.CharField()
    unit = serializers.CharField()
    units_in = serializers.FloatField()
    units_out = serializers.FloatField()
    queue_ms = serializers.FloatField(allow_null=True)
    compute_ms = serializers.FloatField(allow_null=True)
    latency_ms = serializers.FloatField(allow_null=True)
    reserved_cost = serializers.DecimalField(max_digits=20, decimal_places=12)
    cost = serializers.DecimalField(max_digits=20, decimal_places=12)
    complexity = serializers.FloatField(allow_null=True)
    confidence = serializers.FloatField(allow_null=True)
    routing_reason = serializers.CharField()
    escalated_from = serializers.UUIDField(source="escalated_from_id", allow_null=True)
    cached = serializers.BooleanField()
    error_code = serializers.CharField()
    feedback_score = serializers.IntegerField(allow_null=True)
