"""A million inference records in one INSERT … SELECT over generate_series: what the console's tests pin
query counts against and bench/bench_console.py times pages against (both on the same data)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from django.db import DatabaseError, connection

ROWS = 1_000_000
SPREAD_SECONDS = 2.5  # one record every 2.5 s: a million cover about 29 days

INSERT = """
INSERT INTO routing_inferencerecord (
    id, request_id, tenant_id, task, model_id, model_slug, tier, status, created_at, completed_at,
    input_digest, input_preview, input_text, output_preview, items, unit, units_in, units_out,
    queue_ms, compute_ms, latency_ms, reserved_cost, cost, confidence, score, floor, routing_reason,
    escalation_cause, items_escalated, purpose, cached, error_code, error_message, feedback_comment
)
SELECT lpad(to_hex(g), 32, '0')::uuid, %(prefix)s || '-' || g, CASE WHEN g %% 4 = 0 THEN %(second)s ELSE %(first)s END,
       'language_id', CASE WHEN g %% 10 = 0 THEN %(premium)s ELSE %(local)s END,
       CASE WHEN g %% 10 = 0 THEN %(premium_slug)s ELSE %(local_slug)s END,
       CASE WHEN g %% 10 = 0 THEN 'premium' ELSE 'local' END,
       CASE WHEN g %% 50 = 0 THEN 'error' WHEN g %% 10 = 3 THEN 'escalated' ELSE 'ok' END,
       now() - make_interval(secs => g * %(spread)s), now() - make_interval(secs => g * %(spread)s) + interval '20 ms',
       '', 'text', '', 'en', 1, 'characters', 40, 0,
       (g %% 7)::float, 5 + (g %% 97)::float, 6 + (g %% 997)::float, 0.00002,
       CASE WHEN g %% 10 = 0 THEN 0.002 ELSE 0.00001 END, (g %% 100) / 100.0, (g %% 100) / 100.0, 0.5, %(prefix)s,
       CASE WHEN g %% 10 = 3 THEN 'low_confidence' ELSE '' END, 0, 'answer', g %% 20 = 0,
       CASE WHEN g %% 50 = 0 THEN 'model_error' ELSE '' END, '', ''
FROM generate_series(1, %(rows)s) AS g
"""


@dataclass
class Loaded:
    first: object  # Tenant: three records of four
    second: object  # Tenant: one record of four
    local: object  # ModelSpec: nine records of ten
    premium: object  # ModelSpec: one record of ten
    rows_seconds: float  # writing the rows
    seconds: float  # with the indexes rebuilt and ANALYZE
    indexes: int


def load_records(prefix: str, rows: int = ROWS) -> Loaded:
    """Two tenants and two language-ID models named after `prefix`, and `rows` committed records of theirs
    spread over the past (request ids `prefix-N`), with an error every 50th, an escalation every 10th, a
    premium answer every 10th. The caller removes them (TRUNCATE routing_inferencerecord is quickest)."""
    from registry.models import ModelSpec
    from tenants.models import Tenant

    first = Tenant.objects.create(slug=f"{prefix}-one", name=f"{prefix.title()} One")
    second = Tenant.objects.create(slug=f"{prefix}-two", name=f"{prefix.title()} Two")
    local = ModelSpec.objects.create(slug=f"{prefix}-local", display_name="local", task="language_id", backend="fasttext",
                                     source_kind="package", source="x/y", tier="local")
    premium = ModelSpec.objects.create(slug=f"{prefix}-premium", display_name="premium", task="language_id",
                                       backend="openai", source_kind="provider", source="gpt-x", tier="premium")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # A bulk load is quicker with the secondary indexes built once afterwards than maintained row by row;
        # they are rebuilt from their own definitions, so the queries afterwards meet the real schema.
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'routing_inferencerecord' "
                       "AND indexname <> 'routing_inferencerecord_pkey'")
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        # The rows are right by construction: skip a foreign-key check per row and key (superusers only,
        # as the embedded server's is; elsewhere the checks simply run).
        replica = _try(cursor, "SET session_replication_role = replica")
        cursor.execute(INSERT, {"first": first.pk, "second": second.pk, "local": local.pk, "premium": premium.pk,
                                "local_slug": local.slug, "premium_slug": premium.slug, "prefix": prefix,
                                "spread": SPREAD_SECONDS, "rows": rows})
        rows_seconds = time.perf_counter() - started
        if replica:
            cursor.execute("SET session_replication_role = origin")
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("ANALYZE routing_inferencerecord")
    return Loaded(first=first, second=second, local=local, premium=premium, rows_seconds=rows_seconds,
                  seconds=time.perf_counter() - started, indexes=len(indexes))


def _try(cursor, statement: str) -> bool:
    try:
        cursor.execute(statement)
    except DatabaseError:
        return False
    return True
