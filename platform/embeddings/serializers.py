"""Request parsing for collections: every field and limit checked before anything is embedded or written."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from embeddings.filters import InvalidFilter, compile_filter, is_iso_date
from embeddings.models import (
    METADATA_TYPES,
    Collection,
    Distance,
    IngestionJob,
    metadata_schema_problem,
    name_problem,
)
from embeddings.services import DocumentInput, metadata_json

MAX_K = 100
# A quarter of float32's range: then the squared distance of two vectors within it still fits as well.
MAX_SQUARED_LENGTH = float(np.finfo(np.float32).max) / 4


@extend_schema_field({"type": "array", "items": {"type": "number"}, "description": "As many numbers as the collection's dimension."})
class VectorField(serializers.Field):
    """A list of finite numbers of the collection's dimension, checked here: a wrong length is a 400
    naming the field, never a database error."""

    def to_internal_value(self, data: Any) -> np.ndarray:
        # Exact types, checked in C: bool is not a number here, and a 384-number vector costs microseconds.
        if not isinstance(data, list) or not set(map(type, data)) <= {int, float}:
            raise serializers.ValidationError("A list of numbers.")
        collection: Collection = self.context["collection"]
        if len(data) != collection.dimension:
            raise serializers.ValidationError(
                f"{len(data)} numbers; this collection stores {collection.dimension}-dimensional vectors."
            )
        with np.errstate(over="ignore"):
            vector = np.asarray(data, dtype=np.float32)
        if not np.isfinite(vector).all():
            raise serializers.ValidationError("The numbers must be finite (and fit in 32 bits).")
        # Distances are computed in 32 bits: a vector whose squared length overflows them has no cosine and
        # an infinite distance to everything, which no answer can carry (JSON has no Infinity or NaN).
        if float(np.dot(vector.astype(np.float64), vector)) > MAX_SQUARED_LENGTH:
            raise serializers.ValidationError("The numbers are too large: the vector's squared length must fit in 32 bits.")
        if collection.distance == Distance.COSINE and not vector.any():
            raise serializers.ValidationError("A zero vector has no direction: cosine distance is undefined for it.")
        return vector

    def to_representation(self, value: Any) -> list[float]:
        return [float(x) for x in value]


def check_metadata(value: Any, schema: dict[str, str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise serializers.ValidationError("An object.")
    try:
        encoded = metadata_json(value)
    except ValueError:
        raise serializers.ValidationError("Numbers must be finite.") from None
    if _holds_nul(value):
        raise serializers.ValidationError("Must not contain NUL characters.")
    if len(encoded.encode()) > settings.MODELGATE_COLLECTION_MAX_METADATA_BYTES:
        raise serializers.ValidationError(
            f"{len(encoded.encode())} bytes as JSON; the limit is {settings.MODELGATE_COLLECTION_MAX_METADATA_BYTES}."
        )
    for field, kind in schema.items():
        if field in value and value[field] is not None and not _has_type(value[field], kind):
            raise serializers.ValidationError({field: f"The collection's schema says {kind}."})
    return value


def _holds_nul(value: Any) -> bool:
    # PostgreSQL's jsonb cannot hold U+0000: refuse it here rather than fail in the database.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _has_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "date":
        return is_iso_date(value)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind == "integer" else isinstance(value, (int, float))


class DocumentSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=256, trim_whitespace=False)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    metadata = serializers.JSONField(required=False, default=dict)
    vector = VectorField(required=False)

    def validate_id(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Must not be blank.")
        return value

    def validate_text(self, value: str) -> str:
        limit = settings.MODELGATE_COLLECTION_MAX_TEXT_CHARACTERS
        if len(value) > limit:
            raise serializers.ValidationError(f"{len(value)} characters; the limit is {limit}.")
        return value

    def validate_metadata(self, value: Any) -> dict[str, Any]:
        return check_metadata(value, self.context["collection"].metadata_schema)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        collection: Collection = self.context["collection"]
        attrs.setdefault("text", "")
        if "vector" not in attrs:
            if collection.model is None:
                raise serializers.ValidationError({"vector": "This collection has no embedding model: each document needs a vector."})
            if not attrs["text"].strip():
                raise serializers.ValidationError({"text": "Give a text to embed (or a vector)."})
        return attrs


def to_document(attrs: dict[str, Any]) -> DocumentInput:
    return DocumentInput(id=attrs["id"], text=attrs["text"], metadata=attrs["metadata"], vector=attrs.get("vector"))


def document_from_record(fields: dict[str, Any], *, collection: Collection) -> tuple[DocumentInput | None, str | None]:
    """One record of an ingestion job: a document, or the reason it is not one."""
    fields = dict(fields)
    if fields.pop("csv", False):
        fields["metadata"] = _typed_csv_metadata(fields.get("metadata") or {}, collection.metadata_schema)
    serializer = DocumentSerializer(data=fields, context={"collection": collection})
    if not serializer.is_valid():
        return None, first_error(serializer.errors)
    return to_document(serializer.validated_data), None


def _typed_csv_metadata(metadata: dict[str, Any], schema: dict[str, str]) -> dict[str, Any]:
    """CSV cells are strings: the schema, when it names a field, says what they hold."""
    typed = dict(metadata)
    for field, value in metadata.items():
        kind = schema.get(field)
        if not isinstance(value, str) or kind in (None, "string", "date"):
            continue
        text = value.strip()
        try:
            if kind == "integer":
                typed[field] = int(text)
            elif kind == "number":
                number = float(text)
                typed[field] = int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
            elif kind == "boolean" and text.lower() in ("true", "false", "1", "0", "yes", "no"):
                typed[field] = text.lower() in ("true", "1", "yes")
        except ValueError:
            pass  # left a string: the schema check names the field
    return typed


def first_error(errors: Any, path: tuple[str, ...] = ()) -> str:
    """`metadata.year: The collection's schema says integer.`"""
    if isinstance(errors, dict):
        for field, inner in errors.items():
            return first_error(inner, path if field == "non_field_errors" else (*path, str(field)))
    if isinstance(errors, list):
        for index, inner in enumerate(errors):
            if inner:
                return first_error(inner, (*path, str(index)) if isinstance(inner, (dict, list)) else path)
    return f"{'.'.join(path)}: {errors}" if path else str(errors)


class UpsertSerializer(serializers.Serializer):
    documents = DocumentSerializer(many=True, allow_empty=False)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # Count before validating each one: a request far over the limit should not cost the work.
        documents = data.get("documents") if isinstance(data, dict) else None
        limit = settings.MODELGATE_COLLECTION_DOCUMENTS_PER_REQUEST
        if isinstance(documents, list) and len(documents) > limit:
            raise serializers.ValidationError({"documents": (
                f"{len(documents)} documents; the limit is {limit} per request. "
                "Larger sets go through an ingestion job (POST /v1/collections/{collection}/jobs)."
            )})
        return super().to_internal_value(data)

    def validate_documents(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        for index, document in enumerate(value):
            if document["id"] in seen:
                raise serializers.ValidationError({index: {"id": f"{document['id']!r} appears twice in this request."}})
            seen.add(document["id"])
        return value


class CollectionCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    model = serializers.CharField(
        required=False, allow_null=True, default="auto", max_length=100,
        help_text='An embeddings model slug; "auto" (the default) for the one routing picks; null to bring your own vectors.',
    )
    dimension = serializers.IntegerField(
        required=False, min_value=1, help_text="Required without a model; with one, measured (and checked if given)."
    )
    distance = serializers.ChoiceField(choices=Distance.choices, default=Distance.COSINE)
    metadata_schema = serializers.JSONField(
        required=False, default=dict, help_text=f"Optional types of metadata fields, each one of {', '.join(METADATA_TYPES)}."
    )

    def validate_dimension(self, value: int) -> int:
        # Checked before the model measures its dimension: an absurd one must not cost an embedding first.
        limit = settings.MODELGATE_COLLECTION_MAX_DIMENSION
        if value > limit:
            raise serializers.ValidationError(f"{value} is over the limit of {limit}.")
        return value

    def validate_name(self, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_metadata_schema(self, value: Any) -> dict[str, str]:
        problem = metadata_schema_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value


class CollectionSerializer(serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    index = serializers.SerializerMethodField(help_text="ready, building, missing, invalid, or exact only (over 2,000 dimensions).")

    class Meta:
        model = Collection
        fields = ["id", "name", "model", "dimension", "distance", "metadata_schema", "document_count", "index",
                  "created_at", "updated_at"]

    def get_index(self, collection: Collection) -> str:
        from embeddings.indexes import state_of

        return state_of(collection.dimension, collection.distance, self.context.get("index_states")).status


class DocumentOutSerializer(serializers.Serializer):
    id = serializers.CharField(source="external_id")
    text = serializers.CharField()
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DeleteDocumentsSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.CharField(max_length=256, trim_whitespace=False), required=False, allow_empty=False)
    filter = serializers.JSONField(required=False, help_text="Delete every document matching this metadata filter.")

    def validate_ids(self, value: list[str]) -> list[str]:
        limit = settings.MODELGATE_COLLECTION_DOCUMENTS_PER_REQUEST
        if len(value) > limit:
            raise serializers.ValidationError(f"{len(value)} ids; the limit is {limit} per request (or delete by filter).")
        return value

    def validate_filter(self, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise serializers.ValidationError("A non-empty filter: deleting every document is deleting the collection.")
        try:
            return compile_filter(value, schema=self.context["collection"].metadata_schema)
        except InvalidFilter as exc:
            raise serializers.ValidationError(str(exc.detail).removeprefix("filter").lstrip(".: ") or str(exc.detail)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("ids" in attrs) == ("filter" in attrs):
            raise serializers.ValidationError("Give either ids or filter.")
        return attrs


class SearchSerializer(serializers.Serializer):
    query = serializers.CharField(required=False, trim_whitespace=False,
                                  help_text="Text to embed with the collection's model (and to match keywords, and to rerank with).")
    vector = VectorField(required=False, help_text="A query vector, instead of (or besides) the text.")
    k = serializers.IntegerField(required=False, default=10, min_value=1, max_value=MAX_K)
    filter = serializers.JSONField(
        required=False, help_text='Metadata filter: {"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}.'
    )
    ef_search = serializers.IntegerField(required=False, min_value=1, max_value=1000,
                                         help_text="HNSW candidate list size for this query: higher is more accurate and slower.")
    hybrid = serializers.BooleanField(required=False, default=False,
                                      help_text="Also search the text's keywords (PostgreSQL full text), fused by reciprocal rank.")
    rerank = serializers.BooleanField(required=False, default=False,
                                      help_text="Reorder the candidates with a cross-encoder (a rerank model).")
    rerank_model = serializers.CharField(required=False, default="auto", max_length=100)
    candidates = serializers.IntegerField(required=False, min_value=1, max_value=200,
                                          help_text="How many rows each side hands to fusion and rerank (default 50).")
    exact = serializers.BooleanField(required=False, default=False, help_text="Compare with every document instead of using the index.")

    def validate_query(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("Must not be blank.")
        limit = settings.MODELGATE_COLLECTION_MAX_TEXT_CHARACTERS
        if len(value) > limit:
            raise serializers.ValidationError(f"{len(value)} characters; the limit is {limit}.")
        return value

    def validate_filter(self, value: Any) -> Any:
        try:
            return compile_filter(value, schema=self.context["collection"].metadata_schema)
        except InvalidFilter as exc:
            raise serializers.ValidationError(str(exc.detail).removeprefix("filter").lstrip(".: ") or str(exc.detail)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "query" not in attrs and "vector" not in attrs:
            raise serializers.ValidationError("Give a query text or a vector.")
        if "query" not in attrs:
            for option in ("hybrid", "rerank"):
                if attrs[option]:
                    raise serializers.ValidationError({option: "Needs the query text."})
        if "vector" not in attrs and self.context["collection"].model is None:
            raise serializers.ValidationError({"vector": "This collection has no embedding model: search with a vector."})
        return attrs


class JobCreateSerializer(serializers.Serializer):
    file = serializers.FileField(
        required=False, help_text="JSON lines (one document object a line) or CSV (id, text, and metadata columns)."
    )
    format = serializers.ChoiceField(choices=IngestionJob.Format.choices, required=False,
                                     help_text="jsonl or csv; by default from the file name (.csv is CSV, anything else JSON lines).")
    documents = serializers.ListField(child=serializers.DictField(), required=False, allow_empty=False,
                                      help_text="Documents as in an upsert, as many as the request size allows.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("file" in attrs) == ("documents" in attrs):
            raise serializers.ValidationError("Give either a file (multipart) or documents (JSON).")
        if "documents" in attrs:
            attrs["data"] = "\n".join(json.dumps(d, ensure_ascii=False) for d in attrs.pop("documents")).encode()
            attrs["format"], attrs["source_name"] = IngestionJob.Format.JSONL, "request body"
        else:
            upload = attrs.pop("file")
            name = upload.name or "upload"
            attrs.setdefault("format", IngestionJob.Format.CSV if name.lower().endswith(".csv") else IngestionJob.Format.JSONL)
            attrs["data"], attrs["source_name"] = upload.read(), name
        return attrs


class JobSerializer(serializers.ModelSerializer):
    collection = serializers.UUIDField(source="collection_id", read_only=True)
    progress = serializers.SerializerMethodField(help_text="done / total, from 0 to 1.")

    class Meta:
        model = IngestionJob
        fields = ["id", "collection", "status", "format", "source_name", "total", "done", "progress", "inserted", "updated",
                  "unchanged", "embedded", "error_count", "errors", "error_code", "error_message", "attempts", "request_id",
                  "created_at", "started_at", "finished_at"]

    def get_progress(self, job: IngestionJob) -> float:
        return round(job.done / job.total, 4) if job.total else 1.0
