"""The hot path's statement helpers: prepared statements and unflushed telemetry inserts."""
from __future__ import annotations

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from core.db import insert_row_unflushed
from embeddings.models import SearchRecord
from tenants.services import create_tenant


def search_record(tenant) -> SearchRecord:
    return SearchRecord(request_id="req-1", tenant=tenant, collection_name="notes", mode="vector", k=3, rows=0,
                        latency_ms=1.0, database_ms=0.5)


@pytest.mark.django_db(transaction=True)
def test_an_unflushed_insert_commits_its_row_and_leaves_the_connection_durable():
    row = search_record(create_tenant(slug="alpha", name="Alpha"))
    with CaptureQueriesContext(connection) as queries:
        insert_row_unflushed(row)
    [sql] = [q["sql"] for q in queries.captured_queries]
    assert sql.startswith("SELECT set_config('synchronous_commit', 'off', true);") and "INSERT INTO" in sql
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:  # committed: another session sees it
            cursor.execute("SELECT rows, collection_name FROM embeddings_searchrecord WHERE id = %s", [row.pk])
            assert cursor.fetchone() == (0, "notes")
    finally:
        other.close()
    with connection.cursor() as cursor:  # the setting ended with that one transaction
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"


@pytest.mark.django_db
def test_inside_a_transaction_the_row_is_written_durably():
    row = search_record(create_tenant(slug="alpha", name="Alpha"))
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        insert_row_unflushed(row)
    assert all("synchronous_commit" not in q["sql"] for q in queries.captured_queries)
    assert SearchRecord.objects.filter(pk=row.pk).exists()
