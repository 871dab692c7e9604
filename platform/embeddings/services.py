"""Collections and their documents: create, upsert (embedding through the router), delete. Searching them
is embeddings.search."""
from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework import status

from billing.prices import Summary
from core.errors import ApiError, NotFound
from core.recent import Recent
from embeddings import indexes
from embeddings.filters import NO_FILTER, CompiledFilter
from embeddings.models import Collection, Document
from registry.models import ModelSpec
from routing.router import Routed, route
from tenants.models import ApiKey

DIMENSION_PROBE = "How many dimensions does this model embed into?"
UPSERT_ATTEMPTS = 3
_COLLECTION_LOCK = 0x6D67_636F  # advisory-lock namespace: one collection created at a time per tenant


class QuotaExceeded(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    default_code = "quota_exceeded"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


# --- collections ------------------------------------------------------------------------------
def collection_of(*, tenant: Any, ref: str, recent: bool = False) -> Collection:
    """A collection by id or by name, looked up within the tenant: another tenant's collection is
    reported exactly like one that never existed. `recent`: a collection this process found in the
    last MODELGATE_COLLECTION_CACHE_SECONDS will do (searches; find() checks that it still exists)."""
    if recent and (kept := recent_collections.get((tenant.pk, ref))) is not None:
        return kept
    queryset = Collection.objects.filter(tenant=tenant).select_related("model")
    try:
        lookup: dict[str, Any] = {"pk": uuid.UUID(ref)}
    except ValueError:
        lookup = {"name": ref}
    try:
        collection = queryset.get(**lookup)
    except Collection.DoesNotExist:
        raise NotFound(f"No collection {ref!r}.") from None
    if recent:
        recent_collections.put((tenant.pk, ref), collection)
    return collection


# Shared by the threads of a process: the search path only reads these rows.
recent_collections: Recent[tuple[int, str], Collection] = Recent(lambda: settings.MODELGATE_COLLECTION_CACHE_SECONDS)


def create_collection(
    *,
    key: ApiKey,
    name: str,
    model: str | None,
    dimension: int | None,
    distance: str,
    metadata_schema: dict[str, str],
    request_id: str,
) -> tuple[Collection, Routed | None]:
    """Create a collection. With a model, its dimension is measured by embedding one probe text
    through the router (recorded like any inference); without one, the tenant brings vectors."""
    tenant = key.tenant
    if Collection.objects.filter(tenant=tenant, name=name).exists():
        raise Conflict(f"A collection named {name!r} already exists.")
    spec: ModelSpec | None = None
    routed = None
    if model is not None:
        routed = route(
            key=key, task="embeddings", items=[DIMENSION_PROBE], summary=Summary.characters([DIMENSION_PROBE]),
            request_id=request_id, model=model, units_out=lambda values: float(len(values)),
            tokens_in=lambda values: float(sum(e.tokens for e in values)),
        )
        spec = routed.spec or ModelSpec.objects.get(slug=routed.record.model_slug)
        measured = len(routed.values[0].vector)
        if dimension is not None and dimension != measured:
            raise ApiError(f"dimension: {spec.slug} embeds into {measured} dimensions, not {dimension}.")
        dimension = measured
    if dimension is None:
        raise ApiError("dimension: Give the dimension of your vectors, or a model to embed texts with.")
    if dimension > settings.MODELGATE_COLLECTION_MAX_DIMENSION:
        raise ApiError(f"dimension: {dimension} is over the limit of {settings.MODELGATE_COLLECTION_MAX_DIMENSION}.")
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Serialise this tenant's creations, so that two at once cannot both pass the quota check.
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_COLLECTION_LOCK, tenant.pk])
        if Collection.objects.filter(tenant=tenant).count() >= settings.MODELGATE_COLLECTIONS_PER_TENANT:
            raise QuotaExceeded(f"This tenant has reached its limit of {settings.MODELGATE_COLLECTIONS_PER_TENANT} collections.")
        if Collection.objects.filter(tenant=tenant, name=name).exists():
            raise Conflict(f"A collection named {name!r} already exists.")
        collection = Collection.objects.create(
            tenant=tenant, name=name, model=spec, dimension=dimension, distance=distance, metadata_schema=metadata_schema
        )
    request_index(collection)
    return collection, routed


def request_index(collection: Collection) -> None:
    """A collection of a new (dimension, distance) gets its HNSW index built in the background;
    until then its searches are exact, and correct."""
    if indexes.state_of(collection.dimension, collection.distance).status not in (indexes.MISSING, indexes.INVALID):
        return
    from django_q.tasks import async_task

    transaction.on_commit(
        lambda: async_task("embeddings.tasks.build_vector_index", collection.dimension, collection.distance,
                           task_name=f"vector index {collection.dimension} {collection.distance}")
    )


def delete_collection(*, collection: Collection) -> int:
    """Delete a collection with its documents and jobs; returns how many documents went."""
    count = collection.document_count
    Collection.objects.filter(pk=collection.pk).delete()
    return count


# --- documents --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DocumentInput:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None  # float32, the collection's dimension, when the tenant brings it

    @functools.cached_property
    def content_hash(self) -> str:
        digest = hashlib.sha256(self.text.encode())
        if self.vector is not None:
            digest.update(b"\x00vector\x00" + self.vector.astype("<f4").tobytes())
        return digest.hexdigest()


@dataclass
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    embedded: int = 0
    routed: list[Routed] = field(default_factory=list)


def upsert_documents(
    *,
    key: ApiKey,
    collection: Collection,
    documents: Sequence[DocumentInput],
    request_id: str,
    within: Callable[[UpsertResult], None] | None = None,
) -> UpsertResult:
    """Insert or update documents by id, all or nothing.

    Texts whose content hash is unchanged are not embedded again (their metadata is still updated);
    the others are embedded through the router before the write transaction. `within` runs inside
    that transaction (a job advances its progress there, so the two commit together).
    """
    ids = [document.id for document in documents]
    if len(set(ids)) != len(ids):
        raise ApiError("documents: Each id may appear once per request.")
    vectors: dict[tuple[str, str], np.ndarray] = {}
    result = UpsertResult()
    known = _stored_hashes(collection, ids)
    for _ in range(UPSERT_ATTEMPTS):
        pending = [
            d for d in documents
            if d.vector is None and known.get(d.id) != d.content_hash and (d.id, d.content_hash) not in vectors
        ]
        if pending:
            embedded, routed = embed_texts(key=key, collection=collection, texts=[d.text for d in pending], request_id=request_id)
            vectors.update({(d.id, d.content_hash): vector for d, vector in zip(pending, embedded)})
            result.routed.append(routed)
            result.embedded += len(pending)
        with transaction.atomic():
            count = _lock(collection)
            current = _stored_hashes(collection, ids)
            # A document that was unchanged when we looked may have been rewritten since: embed it too.
            stale = [d for d in documents if d.vector is None and current.get(d.id) != d.content_hash
                     and (d.id, d.content_hash) not in vectors]
            if stale:
                known = current
                continue
            new = sum(1 for d in documents if d.id not in current)
            if count + new > settings.MODELGATE_COLLECTION_MAX_DOCUMENTS:
                raise QuotaExceeded(
                    f"This collection would hold {count + new} documents; the limit is {settings.MODELGATE_COLLECTION_MAX_DOCUMENTS}."
                )
            full = [(d, d.vector if d.vector is not None else vectors[(d.id, d.content_hash)])
                    for d in documents if d.vector is not None or (d.id, d.content_hash) in vectors]
            metadata_only = [d for d in documents if d.vector is None and (d.id, d.content_hash) not in vectors]
            inserted, rewritten = _write(collection, full)
            touched = _write_metadata(collection, metadata_only)
            result.inserted, result.updated = inserted, rewritten + touched
            result.unchanged = len(documents) - inserted - rewritten - touched
            if inserted:
                Collection.objects.filter(pk=collection.pk).update(
                    document_count=F("document_count") + inserted, updated_at=timezone.now()
                )
            if within is not None:
                within(result)
            return result
    raise Conflict("These documents keep changing under concurrent writes; try again.")


def embed_texts(*, key: ApiKey, collection: Collection, texts: list[str], request_id: str) -> tuple[list[np.ndarray], Routed]:
    """Embed with the collection's own model, through the router: recorded and billed like any inference."""
    if collection.model is None:
        raise ApiError("This collection has no embedding model: give vectors instead of texts alone.")
    # Shortest first: each batch the pool gathers then holds texts of about one length, and pads little.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    routed = route(
        key=key, task="embeddings", items=[texts[i] for i in order], summary=Summary.characters(texts), request_id=request_id,
        model=collection.model.slug, units_out=lambda values: float(len(values)),
        tokens_in=lambda values: float(sum(e.tokens for e in values)),
    )
    vectors: list[np.ndarray] = [np.empty(0)] * len(texts)
    for position, index in enumerate(order):
        vectors[index] = np.asarray(routed.values[position].vector, dtype=np.float32)
    wrong = next((len(v) for v in vectors if len(v) != collection.dimension), None)
    if wrong is not None:
        raise Conflict(
            f"{collection.model.slug} now embeds into {wrong} dimensions; this collection stores {collection.dimension}.",
            code="model_dimension_changed",
        )
    return vectors, routed


def _lock(collection: Collection) -> int:
    """Lock the collection row: its writers take turns, which keeps document_count exact and the
    per-collection quota a real limit. Returns the count; a collection deleted meanwhile is a 404."""
    count = Collection.objects.select_for_update().filter(pk=collection.pk).values_list("document_count", flat=True).first()
    if count is None:
        raise NotFound(f"No collection {collection.name!r}.")
    return count


def _stored_hashes(collection: Collection, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(
        Document.objects.filter(collection=collection, tenant_id=collection.tenant_id, external_id__in=ids)
        .values_list("external_id", "content_hash")
    )


def vector_text(vector: np.ndarray) -> str:
    """pgvector's text form. Nine significant digits read back as the same float32, and one C-level
    format of the whole vector is several times faster than repr() of each number."""
    return _vector_format(len(vector)) % tuple(vector.tolist())


@functools.lru_cache(maxsize=32)
def _vector_format(dimension: int) -> str:
    return "[" + ",".join(["%.9g"] * dimension) + "]"


def _write(collection: Collection, rows: list[tuple[DocumentInput, np.ndarray]]) -> tuple[int, int]:
    """Upsert full rows; returns (inserted, rewritten). Rows identical to what is stored are not
    rewritten: no dead tuple, no index churn."""
    if not rows:
        return 0, 0
    table = Document._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (collection_id, tenant_id, external_id, text, metadata, embedding, dim, content_hash,
                                 created_at, updated_at)
            SELECT %s, %s, u.external_id, u.text, u.metadata, u.embedding, %s, u.content_hash, now(), now()
            FROM unnest(%s::text[], %s::text[], %s::jsonb[], %s::vector[], %s::text[])
                 AS u(external_id, text, metadata, embedding, content_hash)
            ON CONFLICT (collection_id, external_id) DO UPDATE
            SET text = EXCLUDED.text, metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding, dim = EXCLUDED.dim,
                content_hash = EXCLUDED.content_hash, updated_at = EXCLUDED.updated_at
            WHERE ({table}.content_hash, {table}.metadata) IS DISTINCT FROM (EXCLUDED.content_hash, EXCLUDED.metadata)
            RETURNING (xmax = 0)
            """,
            [
                collection.pk, collection.tenant_id, collection.dimension,
                [d.id for d, _ in rows], [d.text for d, _ in rows], [metadata_json(d.metadata) for d, _ in rows],
                [vector_text(v) for _, v in rows], [d.content_hash for d, _ in rows],
            ],
        )
        written = [inserted for (inserted,) in cursor.fetchall()]
    inserted = sum(written)
    return inserted, len(written) - inserted


def _write_metadata(collection: Collection, documents: list[DocumentInput]) -> int:
    if not documents:
        return 0
    table = Document._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} AS d SET metadata = u.metadata, updated_at = now()
            FROM unnest(%s::text[], %s::jsonb[]) AS u(external_id, metadata)
            WHERE d.collection_id = %s AND d.tenant_id = %s AND d.external_id = u.external_id
              AND d.metadata IS DISTINCT FROM u.metadata
            """,
            [[d.id for d in documents], [metadata_json(d.metadata) for d in documents], collection.pk, collection.tenant_id],
        )
        return cursor.rowcount


def metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def delete_documents(*, collection: Collection, ids: list[str] | None = None, where: CompiledFilter = NO_FILTER) -> int:
    """Delete by ids, or every document matching a metadata filter; returns how many went."""
    if ids is None and not where:
        raise ApiError("Give ids or a non-empty filter.")
    table = Document._meta.db_table
    condition, params = ("external_id = ANY(%s)", [ids]) if ids is not None else ("TRUE" + where.sql, where.params)
    with transaction.atomic():
        _lock(collection)
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} WHERE collection_id = %s AND tenant_id = %s AND {condition}",
                [collection.pk, collection.tenant_id, *params],
            )
            deleted = cursor.rowcount
        if deleted:
            Collection.objects.filter(pk=collection.pk).update(
                document_count=F("document_count") - deleted, updated_at=timezone.now()
            )
    return deleted


def get_document(*, collection: Collection, external_id: str, with_vector: bool = False) -> Document:
    queryset = Document.objects.filter(collection=collection, tenant_id=collection.tenant_id, external_id=external_id)
    queryset = queryset.defer("search") if with_vector else queryset.defer("search", "embedding")
    document = queryset.first()
    if document is None:
        raise NotFound(f"No document {external_id!r} in this collection.")
    return document
