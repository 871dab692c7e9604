"""Retention and deletion of a large tenant: the hourly prune blanking the texts of 300,000 old
records, and the background deletion of a tenant with 300,000 records (each with a quality signal) and
100,000 documents, beside a second tenant that must be left whole. Reported: rows per second, the
number of transactions and the longest one — the lock a running gateway could wait on."""
from __future__ import annotations

import time
from datetime import timedelta

from harness import Table

RECORDS, DOCUMENTS, OTHER_RECORDS = 300_000, 100_000, 50_000

RECORDS_SQL = """
INSERT INTO routing_inferencerecord (
    id, request_id, tenant_id, task, model_slug, tier, status, created_at, input_digest, input_preview, input_text,
    output_preview, items, unit, units_in, units_out, reserved_cost, cost, routing_reason, escalation_cause,
    items_escalated, purpose, cached, error_code, error_message, feedback_comment
)
SELECT md5(%(tenant)s || '-' || g)::uuid, 'bench-' || g, %(tenant)s, 'chat', 'bench-local', 'local', 'ok',
       now() - interval '40 days' + make_interval(secs => g), '', 'a prompt preview', 'the full prompt text of the request',
       'an answer preview', 1, 'tokens', 40, 20, 0, 0.0001, 'bench', '', 0, 'answer', false, '', '', ''
FROM generate_series(1, %(rows)s) AS g
"""
SIGNALS_SQL = """
INSERT INTO routing_qualitysignal (record_id, source, agreement, detail, created_by, created_at)
SELECT id, 'feedback', 1.0, '', '', now() FROM routing_inferencerecord WHERE tenant_id = %(tenant)s
"""
DOCUMENTS_SQL = """
INSERT INTO embeddings_document (collection_id, tenant_id, external_id, text, metadata, embedding, dim, content_hash,
                                 created_at, updated_at)
SELECT %(collection)s, %(tenant)s, 'doc-' || g, 'document text ' || g, '{}', '[1,2,3]', 3, md5(g::text) || md5(g::text),
       now(), now()
FROM generate_series(1, %(rows)s) AS g
"""


def run() -> Table:
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from embeddings.models import Collection
    from routing.models import InferenceRecord
    from routing.retention import prune_record_texts
    from tenants import deletion
    from tenants.models import Tenant, TenantDeletion
    from tenants.ownership import owned_models

    big = Tenant.objects.create(slug="bench-big", name="Big")
    other = Tenant.objects.create(slug="bench-other", name="Other")
    collection = Collection.objects.create(tenant=big, name="docs", dimension=3)
    with connection.cursor() as cursor:
        cursor.execute(RECORDS_SQL, {"tenant": big.pk, "rows": RECORDS})
        cursor.execute(RECORDS_SQL, {"tenant": other.pk, "rows": OTHER_RECORDS})
        cursor.execute(SIGNALS_SQL, {"tenant": big.pk})
        cursor.execute(DOCUMENTS_SQL, {"collection": collection.pk, "tenant": big.pk, "rows": DOCUMENTS})
        cursor.execute("ANALYZE")
    batch = settings.MODELGATE_DELETION_BATCH
    rows: list[list[object]] = []

    statements, longest = [0], [0.0]

    def timed(execute, sql, params, many, context):
        """Count the writing statements and keep the longest: each runs in its own batch transaction."""
        begin = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if sql.startswith(("DELETE", "UPDATE")):
                longest[0] = max(longest[0], time.perf_counter() - begin)
                statements[0] += 1

    def measured(label: str, action) -> object:
        statements[0], longest[0] = 0, 0.0
        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            result = action()
        elapsed = time.perf_counter() - started
        return result, elapsed, [label, statements[0], round(longest[0] * 1000, 1)]

    # Retention: only the big tenant's texts are due (30 days; the other tenant keeps its own 60).
    Tenant.objects.filter(pk=other.pk).update(record_retention_days=60)
    blanked, elapsed, info = measured("retention prune: texts blanked", lambda: prune_record_texts(now=timezone.now()))
    assert blanked == {"bench-big": RECORDS}, blanked
    rows.append([info[0], RECORDS, round(elapsed, 1), round(RECORDS / elapsed), info[1], info[2]])
    nothing, elapsed, info = measured("the next hour's prune: nothing due",
                                      lambda: prune_record_texts(now=timezone.now() + timedelta(hours=1)))
    assert nothing == {}
    rows.append([info[0], 0, round(elapsed, 3), "–", info[1], info[2]])

    job, _ = deletion.request_deletion(big, background=False)
    done, elapsed, info = measured("tenant deletion: rows removed", lambda: deletion.run(job.pk, time_limit=float("inf")))
    assert done == "done"
    job = TenantDeletion.objects.get(pk=job.pk)
    assert all(not owned.rows(big.pk).exists() for owned in owned_models())
    assert InferenceRecord.objects.filter(tenant=other).count() == OTHER_RECORDS
    rows.append([info[0], job.removed, round(elapsed, 1), round(job.removed / elapsed), info[1], info[2]])
    return Table(
        title="Retention and tenant deletion at scale",
        columns=["operation", "rows", "seconds", "rows/s", "UPDATE/DELETE statements", "longest statement (ms)"],
        rows=rows,
        notes=[
            f"{RECORDS:,} records with a quality signal each and {DOCUMENTS:,} documents for the deleted tenant; "
            f"{OTHER_RECORDS:,} records of another tenant, checked untouched. Batches of MODELGATE_DELETION_BATCH={batch}.",
            "Each batch is its own transaction: a row lock is held about as long as the longest statement shown.",
        ],
    )
