"""Collections of a tenant's documents, embedded and searchable, all in one pgvector table.

Documents of every dimension share `embeddings_document`: the column is an untyped `vector`, and
each dimension in use has its own partial HNSW index on `(embedding::vector(N)) WHERE dim = N`.
"""
from __future__ import annotations

import re
import uuid

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Func, Q
from django.utils import timezone
from pgvector.django import VectorField

from registry.models import ModelSpec
from routing.models import InferenceRecord
from tenants.models import ApiKey, Tenant

# pgvector cannot build an HNSW index over more dimensions than this: wider vectors are searched exactly.
MAX_INDEXED_DIMENSION = 2000
# Built by migration; any other (dimension, distance) gets its index when a collection first needs it.
COMMON_DIMENSIONS = (384, 768, 1024, 1536)
TEXT_SEARCH_CONFIG = "english"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
METADATA_TYPES = ("string", "number", "integer", "boolean", "date")


class Distance(models.TextChoices):
    COSINE = "cosine", "Cosine"
    INNER_PRODUCT = "inner_product", "Inner product"
    L2 = "l2", "Euclidean (L2)"


# The pgvector operator each distance orders by, and the operator class its index is built with.
DISTANCE_OPERATORS = {Distance.COSINE: "<=>", Distance.INNER_PRODUCT: "<#>", Distance.L2: "<->"}
DISTANCE_OPCLASSES = {Distance.COSINE: "vector_cosine_ops", Distance.INNER_PRODUCT: "vector_ip_ops", Distance.L2: "vector_l2_ops"}


def vector_index_name(dimension: int, distance: str) -> str:
    return f"document_hnsw_{dimension}_{distance}"


class Collection(models.Model):
    """A tenant's named set of documents, embedded by one model into one vector space."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="collections")
    name = models.CharField(max_length=100, help_text="Unique per tenant; usable in URLs in place of the id.")
    model = models.ForeignKey(
        ModelSpec, null=True, blank=True, on_delete=models.PROTECT, related_name="collections",
        help_text="The embeddings model that embeds texts and queries; empty when the tenant brings its own vectors.",
    )
    dimension = models.PositiveSmallIntegerField()
    distance = models.CharField(max_length=16, choices=Distance.choices, default=Distance.COSINE)
    metadata_schema = models.JSONField(
        default=dict, blank=True,
        help_text='Optional types of metadata fields: {"year": "integer", "published": "date"}; others are free.',
    )
    document_count = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant__slug", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="one_collection_name_per_tenant")]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name}"

    def clean(self) -> None:
        problems = {"name": name_problem(self.name), "metadata_schema": metadata_schema_problem(self.metadata_schema)}
        errors = {field: problem for field, problem in problems.items() if problem}
        if errors:
            raise ValidationError(errors)


def name_problem(name: str) -> str | None:
    if not NAME_PATTERN.match(name or ""):
        return "Letters, digits, '.', '_' and '-', starting with a letter or digit; at most 100."
    try:
        uuid.UUID(name)
    except ValueError:
        return None
    # Names stand in for ids in URLs, so a name must never read as one.
    return "A name cannot look like a collection id (a UUID)."


def metadata_schema_problem(schema: object) -> str | None:
    if not isinstance(schema, dict):
        return "An object of field name to type."
    for field, kind in schema.items():
        if kind not in METADATA_TYPES:
            return f"{field!r}: the type must be one of {', '.join(METADATA_TYPES)}."
    return None


class Document(models.Model):
    """One text (or vector) of a collection, found by the id the tenant gave it."""

    # Not indexed on their own: the unique (collection, external id) index leads with the collection,
    # and nothing looks documents up by tenant alone.
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="documents", db_index=False)
    # Denormalised from the collection so that every document query names its tenant.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    external_id = models.CharField(max_length=256)
    text = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    embedding = VectorField()
    dim = models.PositiveSmallIntegerField()
    content_hash = models.CharField(
        max_length=64, help_text="SHA-256 of the text (and the vector, when given): unchanged content is not embedded again."
    )
    search = models.GeneratedField(
        expression=SearchVector("text", config=TEXT_SEARCH_CONFIG),
        output_field=SearchVectorField(),
        db_persist=True,
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "external_id"], name="one_document_id_per_collection"),
            # The partial indexes trust `dim`: it must be the vector's real length.
            models.CheckConstraint(
                condition=Q(dim=Func("embedding", function="vector_dims", output_field=models.IntegerField())),
                name="document_dim_matches_vector",
            ),
        ]
        indexes = [
            GinIndex(fields=["search"], name="document_search"),
            GinIndex(fields=["metadata"], opclasses=["jsonb_path_ops"], name="document_metadata"),
            # The partial HNSW indexes are SQL of their own (migration 0002 and embeddings.indexes).
        ]

    def __str__(self) -> str:
        return self.external_id


class SearchRecord(models.Model):
    """One search of a collection: how long it took and how many rows it returned. The query's
    embedding and any rerank are inference records of the same request id."""

    class Mode(models.TextChoices):
        VECTOR = "vector", "Vector"
        EXACT = "exact", "Exact (no index)"
        HYBRID = "hybrid", "Hybrid (vector + keyword)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request_id = models.CharField(max_length=128, db_index=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    operator = models.CharField(max_length=150, blank=True, help_text="The operator who searched from the admin.")
    collection = models.ForeignKey(Collection, null=True, on_delete=models.SET_NULL, related_name="+")
    collection_name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)
    mode = models.CharField(max_length=16, choices=Mode.choices)
    query_preview = models.CharField(max_length=200, blank=True)
    k = models.PositiveSmallIntegerField()
    ef_search = models.PositiveSmallIntegerField(null=True, blank=True)
    filtered = models.BooleanField(default=False)
    reranked = models.BooleanField(default=False)
    rows = models.PositiveIntegerField()
    latency_ms = models.FloatField(help_text="The whole search: query embedding, database, fusion and rerank.")
    database_ms = models.FloatField()
    embedding = models.ForeignKey(InferenceRecord, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="search_tenant_time")]

    def __str__(self) -> str:
        return f"{self.collection_name} k={self.k} {self.rows} rows"


class IngestionJob(models.Model):
    """A large ingestion run in the background, a chunk at a time, resumable from its last chunk."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSON lines"
        CSV = "csv", "CSV"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="jobs", db_index=False)
    api_key = models.ForeignKey(
        ApiKey, null=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The key that started the job: its models, budget and limits apply to every chunk.",
    )
    request_id = models.CharField(max_length=128, help_text="Of the request that started the job; its inferences carry it too.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    format = models.CharField(max_length=8, choices=Format.choices)
    source_name = models.CharField(max_length=255, blank=True)
    source = models.BinaryField(editable=False, help_text="The uploaded documents, as received.")
    total = models.PositiveIntegerField(help_text="Documents in the source.")
    done = models.PositiveIntegerField(default=0, help_text="Documents processed: the job resumes after them.")
    inserted = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    embedded = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="The first errors, each with its line.")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True, help_text="A worker holds the job until then.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["collection", "-created_at"], name="job_collection_time"),
            models.Index(fields=["updated_at"], condition=Q(status__in=["queued", "running"]), name="job_unfinished"),
        ]

    def __str__(self) -> str:
        return f"{self.collection} {self.status} {self.done}/{self.total}"
