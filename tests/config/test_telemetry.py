"""The background writer of telemetry rows: written after the request, batched, nothing lost."""
from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import telemetry
from core.telemetry import BackgroundWriter
from embeddings.models import SearchRecord
from tenants.services import create_tenant

pytestmark = pytest.mark.django_db(transaction=True)  # the writer's thread has its own connection


@pytest.fixture
def writer():
    created = BackgroundWriter(linger=0.2)  # rows submitted together go as one batch
    yield created
    assert created.stop()  # its thread's connection closed: the test database can go


@pytest.fixture(autouse=True)
def stop_the_process_writer():
    yield
    assert telemetry.writer.stop()


def record(tenant, **fields) -> SearchRecord:
    values = dict(request_id=f"req-{uuid.uuid4().hex[:8]}", tenant=tenant, collection_name="notes", mode="vector", k=3,
                  rows=0, latency_ms=1.0, database_ms=0.5)
    return SearchRecord(**{**values, **fields})


def test_rows_are_written_by_the_writer_thread_not_the_caller(settings):
    settings.MODELGATE_TELEMETRY_BACKGROUND = True
    tenant = create_tenant(slug="alpha", name="Alpha")
    rows = [record(tenant, rows=n) for n in range(5)]
    with CaptureQueriesContext(connection) as queries:
        for row in rows:
            telemetry.write(row)
    assert not queries.captured_queries  # the caller's connection sent nothing
    assert telemetry.writer.flush()
    assert sorted(SearchRecord.objects.filter(tenant=tenant).values_list("rows", flat=True)) == [0, 1, 2, 3, 4]


def test_a_row_the_table_refuses_costs_only_itself(writer):
    tenant = create_tenant(slug="alpha", name="Alpha")
    good = [record(tenant, rows=1), record(tenant, rows=2)]
    orphan = record(tenant, rows=3)
    orphan.collection_id = uuid.uuid4()  # a collection deleted between the search and its record
    for row in (good[0], orphan, good[1]):
        writer.submit(row)
    assert writer.flush()
    assert sorted(SearchRecord.objects.filter(tenant=tenant).values_list("rows", flat=True)) == [1, 2]
    assert (writer.written, writer.failed) == (2, 1)


def test_a_full_queue_makes_the_caller_write_its_own_row(monkeypatch):
    tenant = create_tenant(slug="alpha", name="Alpha")
    writer = BackgroundWriter(queue_rows=1)
    monkeypatch.setattr(writer, "_ensure_thread", lambda: None)  # no thread drains the queue
    queued, overflow = record(tenant, rows=1), record(tenant, rows=2)
    writer.submit(queued)
    writer.submit(overflow)
    assert list(SearchRecord.objects.filter(tenant=tenant).values_list("rows", flat=True)) == [2]


def test_flush_and_stop_without_a_thread_return_at_once():
    idle = BackgroundWriter()
    assert idle.flush(timeout=0.1) and idle.stop(timeout=0.1)


def test_a_stopped_writer_starts_again_with_the_next_row(writer):
    tenant = create_tenant(slug="alpha", name="Alpha")
    writer.submit(record(tenant, rows=1))
    assert writer.stop()  # writes what was queued before it ends
    writer.submit(record(tenant, rows=2))
    assert writer.flush()
    assert sorted(SearchRecord.objects.filter(tenant=tenant).values_list("rows", flat=True)) == [1, 2]
