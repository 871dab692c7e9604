"""The partial HNSW indexes of the document table, one per (dimension, distance) in use: their state,
and building a missing one without locking writers out (CREATE INDEX CONCURRENTLY)."""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

from django.db import connection

from embeddings.models import (
    COMMON_DIMENSIONS,
    DISTANCE_OPCLASSES,
    MAX_INDEXED_DIMENSION,
    Collection,
    Distance,
    Document,
    vector_index_name,
)

logger = logging.getLogger("modelgate.embeddings")

READY, BUILDING, INVALID, MISSING, EXACT_ONLY = "ready", "building", "invalid", "missing", "exact only"


@dataclass(frozen=True)
class IndexState:
    dimension: int
    distance: str
    status: str
    size_bytes: int | None = None

    @property
    def name(self) -> str:
        return vector_index_name(self.dimension, self.distance)


def index_states() -> dict[str, IndexState]:
    """Every vector index the table has, by name, with whether PostgreSQL may use it yet."""
    table = Document._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, i.indisvalid, pg_relation_size(c.oid),
                   EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = c.oid)
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = %s::regclass AND c.relname LIKE 'document\\_hnsw\\_%%'
            """,
            [table],
        )
        rows = cursor.fetchall()
    states = {}
    for name, valid, size, in_progress in rows:
        _, _, dimension, distance = name.split("_", 3)
        status = READY if valid else (BUILDING if in_progress else INVALID)
        states[name] = IndexState(int(dimension), distance, status, size)
    return states


def state_of(dimension: int, distance: str, states: dict[str, IndexState] | None = None) -> IndexState:
    if dimension > MAX_INDEXED_DIMENSION:
        return IndexState(dimension, distance, EXACT_ONLY)
    states = index_states() if states is None else states
    return states.get(vector_index_name(dimension, distance)) or IndexState(dimension, distance, MISSING)


def needed_indexes() -> list[tuple[int, str]]:
    """The (dimension, distance) pairs collections use, plus the common ones the migration builds."""
    pairs = set(Collection.objects.values_list("dimension", "distance").distinct())
    pairs |= {(dimension, Distance.COSINE.value) for dimension in COMMON_DIMENSIONS}
    return sorted(pair for pair in pairs if pair[0] <= MAX_INDEXED_DIMENSION)


def build_index(dimension: int, distance: str) -> str:
    """Create the index for one (dimension, distance); a no-op when it is ready or being built.

    Outside a transaction it is built CONCURRENTLY, so that upserts and searches go on meanwhile;
    inside one (a migration, a test) the ordinary way. A failed concurrent build leaves an invalid
    index behind: it is dropped and built again.
    """
    if dimension > MAX_INDEXED_DIMENSION:
        return EXACT_ONLY
    if distance not in DISTANCE_OPCLASSES:
        raise ValueError(f"Unknown distance {distance!r}.")
    name = vector_index_name(int(dimension), distance)
    in_transaction = connection.in_atomic_block
    concurrently = "" if in_transaction else "CONCURRENTLY "
    quote = connection.ops.quote_name
    lock = zlib.crc32(name.encode())
    with connection.cursor() as cursor:
        if in_transaction:
            # DDL cannot run while the transaction still owes deferred constraint checks.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"SELECT {'pg_try_advisory_xact_lock' if in_transaction else 'pg_try_advisory_lock'}(%s)", [lock])
        if not cursor.fetchone()[0]:
            return BUILDING
        try:
            state = state_of(dimension, distance)
            if state.status in (READY, BUILDING):
                return state.status
            if state.status == INVALID:
                cursor.execute(f"DROP INDEX {concurrently}IF EXISTS {quote(name)}")
            logger.info("building vector index", extra={"index": name})
            cursor.execute(
                f"CREATE INDEX {concurrently}IF NOT EXISTS {quote(name)} ON {quote(Document._meta.db_table)} "
                f"USING hnsw ((embedding::vector({int(dimension)})) {DISTANCE_OPCLASSES[distance]}) "
                f"WITH (m = 16, ef_construction = 64) WHERE dim = {int(dimension)}"
            )
        finally:
            if not in_transaction:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [lock])
    logger.info("vector index built", extra={"index": name})
    return READY
