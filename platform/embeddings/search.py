"""Search in a collection: by vector (HNSW, or exact), by vector fused with keywords (reciprocal rank
fusion), and with a cross-encoder rerank; every search recorded."""
from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from billing.prices import Summary
from core import telemetry
from core.errors import ApiError, NotFound
from core.logs import current_request_id
from embeddings.filters import NO_FILTER, CompiledFilter
from embeddings.models import DISTANCE_OPERATORS, TEXT_SEARCH_CONFIG, Collection, Distance, Document, SearchRecord
from embeddings.services import embed_texts, recent_collections, vector_text
from inference.payloads import RerankInput
from routing.router import Routed, route
from tenants.models import ApiKey

RRF_K = 60  # reciprocal rank fusion's constant: a document's weight in a list is 1 / (60 + its rank)
DEFAULT_CANDIDATES = 50  # rows each side contributes to fusion or rerank, unless the request says
MAX_CANDIDATES = 200


@dataclass(frozen=True)
class SearchQuery:
    k: int
    text: str | None = None
    vector: np.ndarray | None = None
    filter: CompiledFilter = NO_FILTER
    ef_search: int | None = None
    hybrid: bool = False
    rerank: bool = False
    rerank_model: str = "auto"
    candidates: int | None = None
    exact: bool = False

    @property
    def mode(self) -> str:
        if self.hybrid:
            return SearchRecord.Mode.HYBRID
        return SearchRecord.Mode.EXACT if self.exact else SearchRecord.Mode.VECTOR

    @property
    def depth(self) -> int:
        """Rows each side returns: k, or the wider candidate pool that fusion and rerank choose from."""
        if not (self.hybrid or self.rerank):
            return self.k
        return max(self.k, min(MAX_CANDIDATES, self.candidates or DEFAULT_CANDIDATES))


@dataclass
class Hit:
    pk: int
    id: str
    text: str
    metadata: dict[str, Any]
    score: float
    distance: float | None = None
    vector_rank: int | None = None
    keyword_rank: int | None = None
    rerank_score: float | None = None


@dataclass
class SearchOutcome:
    hits: list[Hit]
    record: SearchRecord
    embedding: Routed | None = None
    rerank: Routed | None = None
    plan: list[str] = field(default_factory=list)


def search_collection(*, key: ApiKey, collection: Collection, query: SearchQuery, request_id: str) -> SearchOutcome:
    """A tenant's search: the query embedded and any rerank run through the router, the search recorded."""
    started = time.perf_counter()
    embedding = None
    vector = query.vector
    if vector is None:
        if collection.model is None:
            raise ApiError("vector: This collection has no embedding model: search with a vector.")
        [vector], embedding = embed_texts(key=key, collection=collection, texts=[query.text], request_id=request_id)

    def record(hits: list[Hit], database_ms: float, reranked: Routed | None) -> SearchRecord:
        row = SearchRecord(
            request_id=request_id, tenant_id=collection.tenant_id, api_key=key, collection=collection,
            collection_name=collection.name, mode=query.mode, query_preview=(query.text or "")[:200], k=query.k,
            ef_search=None if query.exact else effective_ef_search(query), filtered=bool(query.filter),
            reranked=reranked is not None, rows=len(hits), latency_ms=(time.perf_counter() - started) * 1000,
            database_ms=database_ms, embedding=embedding.record if embedding else None,
        )
        telemetry.write(row)  # after the response: a search waits for its answer, not for its record
        return row

    database_started = time.perf_counter()
    hits = find(collection=collection, vector=vector, query=query)
    database_ms = (time.perf_counter() - database_started) * 1000
    reranked = None
    if query.rerank and hits:
        hits, reranked = rerank(key=key, text=query.text, hits=hits, model=query.rerank_model, request_id=request_id)
    hits = hits[: query.k]
    return SearchOutcome(hits=hits, record=record(hits, database_ms, reranked), embedding=embedding, rerank=reranked)


def operator_search(*, collection: Collection, query: SearchQuery, operator: str) -> SearchOutcome:
    """An operator's search from the admin: the query is embedded by this process's model pool and
    the search recorded under the operator's name. No key and no tenant budget are involved: support
    work is not the tenant's usage."""
    from registry.services import ensure_prepared, get_pool

    started = time.perf_counter()
    vector = query.vector
    if vector is None:
        if collection.model is None or not collection.model.is_local:
            raise ApiError("Text search here needs the collection's model to run locally; search with a vector.")
        ensure_prepared(collection.model)
        vector = np.asarray(get_pool().infer(collection.model.to_config(), query.text, timeout=60).vector, dtype=np.float32)
    database_started = time.perf_counter()
    hits = find(collection=collection, vector=vector, query=query)[: query.k]
    database_ms = (time.perf_counter() - database_started) * 1000
    plan = explain(collection=collection, vector=vector, query=query)
    record = SearchRecord.objects.create(
        request_id=current_request_id.get() or uuid.uuid4().hex, tenant_id=collection.tenant_id, operator=operator[:150],
        collection=collection, collection_name=collection.name, mode=query.mode, query_preview=(query.text or "")[:200],
        k=query.k, ef_search=None if query.exact else effective_ef_search(query), filtered=bool(query.filter),
        rows=len(hits), latency_ms=(time.perf_counter() - started) * 1000, database_ms=database_ms,
    )
    return SearchOutcome(hits=hits, record=record, plan=plan)


def effective_ef_search(query: SearchQuery) -> int:
    # Fewer candidates than rows asked for would cap recall; pgvector allows 1..1000.
    return min(1000, max(query.ef_search or settings.MODELGATE_SEARCH_EF_SEARCH, query.depth))


def find(*, collection: Collection, vector: np.ndarray, query: SearchQuery) -> list[Hit]:
    """The database half of a search, in one round trip: the HNSW settings, the collection's check
    and the searches go as one message, which PostgreSQL runs as one transaction (client-side
    binding sends them as one query). The settings are local to that transaction, so they never leak
    into another request's use of a pooled connection (inside a caller's transaction, they last
    until it ends)."""
    statements = [_settings_sql(query), _exists_sql(collection), _nearest_sql(collection, vector, query)]
    keyword = query.hybrid and bool(query.text)
    if keyword:
        statements.append(_keyword_sql(collection, query))
    with connection.cursor() as cursor:
        cursor.execute(";\n".join(sql for sql, _ in statements), [p for _, params in statements for p in params])
        cursor.nextset()
        if cursor.fetchone() is None:
            # Deleted since it was looked up (a recently seen collection may be a few seconds old).
            recent_collections.forget()
            raise NotFound(f"No collection {collection.name!r}.")
        cursor.nextset()
        nearest = _nearest_hits(cursor.fetchall(), collection)
        keyword_hits = []
        if keyword:
            cursor.nextset()
            keyword_hits = _keyword_hits(cursor.fetchall())
    return fuse(nearest, keyword_hits) if query.hybrid else nearest


def explain(*, collection: Collection, vector: np.ndarray, query: SearchQuery) -> list[str]:
    """PostgreSQL's plan for the vector half of a search: whether it walks the HNSW index, scans
    the collection, or goes through the metadata index first."""
    sql, params = _nearest_sql(collection, vector, query)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(*_settings_sql(query))
        cursor.execute("EXPLAIN " + sql, params)
        return [row[0] for row in cursor.fetchall()]


def _settings_sql(query: SearchQuery) -> tuple[str, list[Any]]:
    """SET LOCAL for one search. relaxed_order: when a filter discards rows, the HNSW scan goes on
    until it has found enough. No JIT: the planner's cost of an index scan that might walk the whole
    graph passes the JIT threshold, and compiling (~3 ms) costs more than the search it would speed up."""
    return (
        "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        "set_config('jit', 'off', true)",
        [str(effective_ef_search(query))],
    )


def _exists_sql(collection: Collection) -> tuple[str, list[Any]]:
    return f"SELECT 1 FROM {Collection._meta.db_table} WHERE id = %s AND tenant_id = %s", [collection.pk, collection.tenant_id]


def _nearest_sql(collection: Collection, vector: np.ndarray, query: SearchQuery) -> tuple[str, list[Any]]:
    dimension = int(collection.dimension)
    operator = DISTANCE_OPERATORS[collection.distance]
    # The partial index matches only this exact expression (and `dim = N` as a literal); the bare
    # column matches no index, which is what an exact search wants.
    column = "embedding" if query.exact else f"(embedding::vector({dimension}))"
    sql = f"""
        SELECT id, external_id, text, metadata, distance FROM (
            SELECT id, external_id, text, metadata, {column} {operator} %s::vector({dimension}) AS distance
            FROM {Document._meta.db_table}
            WHERE collection_id = %s AND tenant_id = %s AND dim = {dimension}{query.filter.sql}
            ORDER BY distance LIMIT %s
        ) AS nearest ORDER BY distance"""
    return sql, [vector_text(vector), collection.pk, collection.tenant_id, *query.filter.params, query.depth]


def _nearest_hits(rows: list[tuple], collection: Collection) -> list[Hit]:
    similarity = _similarity(collection.distance)
    return [
        Hit(pk=pk, id=external_id, text=text, metadata=_json(metadata), score=similarity(distance), distance=distance,
            vector_rank=rank)
        for rank, (pk, external_id, text, metadata, distance) in enumerate(rows, 1)
    ]


def _keyword_sql(collection: Collection, query: SearchQuery) -> tuple[str, list[Any]]:
    sql = f"""
        SELECT id, external_id, text, metadata, ts_rank_cd(search, q) AS rank
        FROM {Document._meta.db_table}, websearch_to_tsquery(%s::regconfig, %s) AS q
        WHERE collection_id = %s AND tenant_id = %s AND search @@ q{query.filter.sql}
        ORDER BY rank DESC, id LIMIT %s"""
    return sql, [TEXT_SEARCH_CONFIG, query.text, collection.pk, collection.tenant_id, *query.filter.params, query.depth]


def _keyword_hits(rows: list[tuple]) -> list[Hit]:
    return [
        Hit(pk=pk, id=external_id, text=text, metadata=_json(metadata), score=float(rank), keyword_rank=position)
        for position, (pk, external_id, text, metadata, rank) in enumerate(rows, 1)
    ]


def fuse(nearest: list[Hit], keyword: list[Hit]) -> list[Hit]:
    """Reciprocal rank fusion: ranks, not raw scores, so cosine similarities and text ranks combine."""
    fused = {hit.pk: hit for hit in nearest}
    for hit in keyword:
        fused.setdefault(hit.pk, hit).keyword_rank = hit.keyword_rank
    for hit in fused.values():
        hit.score = sum(1 / (RRF_K + rank) for rank in (hit.vector_rank, hit.keyword_rank) if rank is not None)
    return sorted(fused.values(), key=lambda h: (-h.score, h.vector_rank or math.inf, h.keyword_rank or math.inf))


def rerank(*, key: ApiKey, text: str | None, hits: list[Hit], model: str, request_id: str) -> tuple[list[Hit], Routed]:
    """Order the candidates by a cross-encoder's relevance to the query, through the router."""
    if not text:
        raise ApiError("query: Rerank needs the query text.")
    scored = [hit for hit in hits if hit.text.strip()]
    if not scored:
        raise ApiError("rerank: None of the candidates has text to rerank.")
    documents = tuple(hit.text for hit in scored)
    routed = route(
        key=key, task="rerank", items=[RerankInput(query=text, documents=documents)],
        summary=Summary.characters([text, *documents]), request_id=request_id, model=model,
        units_out=lambda values: float(len(documents)),
    )
    for hit, score in zip(scored, routed.values[0].scores):
        hit.rerank_score = hit.score = float(score)
    ordered = sorted(scored, key=lambda h: -h.rerank_score) + [hit for hit in hits if not hit.text.strip()]
    return ordered, routed


def _similarity(distance: str) -> Callable[[float], float]:
    """Higher is better whatever the metric: cosine similarity, inner product, negative L2 distance."""
    if distance == Distance.COSINE:
        return lambda d: 1.0 - d
    return lambda d: -d


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
