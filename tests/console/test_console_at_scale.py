"""The console with a million inference records present: the dashboard, the record list and a trace each cost
a fixed number of queries (pinned here; how long they take is for the benchmarks, not for tests).

One module-scoped fixture writes the million rows with one INSERT … SELECT over generate_series and removes them
afterwards; keep every test that needs them in this module."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import UsageDaily
from billing.usage import rollup, today
from registry.models import ModelSpec
from routing.models import InferenceRecord
from tenants.models import Tenant
from tests.console.conftest import DASHBOARD, RECORDS

ROWS = 1_000_000
SPREAD_SECONDS = 2.5  # one record every 2.5 s: a million cover about 29 days

INSERT = """
INSERT INTO routing_inferencerecord (
    id, request_id, tenant_id, task, model_id, model_slug, tier, status, created_at, completed_at,
    input_digest, input_preview, input_text, output_preview, items, unit, units_in, units_out,
    queue_ms, compute_ms, latency_ms, reserved_cost, cost, confidence, score, floor, routing_reason,
    escalation_cause, items_escalated, purpose, cached, error_code, error_message, feedback_comment
)
SELECT lpad(to_hex(g), 32, '0')::uuid, 'scale-' || g, CASE WHEN g %% 4 = 0 THEN %(second)s ELSE %(first)s END, 'language_id',
       CASE WHEN g %% 10 = 0 THEN %(premium)s ELSE %(local)s END,
       CASE WHEN g %% 10 = 0 THEN 'scale-premium' ELSE 'scale-local' END,
       CASE WHEN g %% 10 = 0 THEN 'premium' ELSE 'local' END,
       CASE WHEN g %% 50 = 0 THEN 'error' WHEN g %% 10 = 3 THEN 'escalated' ELSE 'ok' END,
       now() - make_interval(secs => g * %(spread)s), now() - make_interval(secs => g * %(spread)s) + interval '20 ms',
       '', 'text', '', 'en', 1, 'characters', 40, 0,
       (g %% 7)::float, 5 + (g %% 97)::float, 6 + (g %% 997)::float, 0.00002, CASE WHEN g %% 10 = 0 THEN 0.002 ELSE 0.00001 END,
       (g %% 100) / 100.0, (g %% 100) / 100.0, 0.5, 'scale',
       CASE WHEN g %% 10 = 3 THEN 'low_confidence' ELSE '' END, 0, 'answer', g %% 20 = 0,
       CASE WHEN g %% 50 = 0 THEN 'model_error' ELSE '' END, '', ''
FROM generate_series(1, %(rows)s) AS g
"""


@pytest.fixture(scope="module")
def million(django_db_setup, django_db_blocker):
    """A million committed records of two tenants and two models over ~29 days, rolled up; removed afterwards."""
    with django_db_blocker.unblock():
        first = Tenant.objects.create(slug="scale-one", name="Scale One")
        second = Tenant.objects.create(slug="scale-two", name="Scale Two")
        local = ModelSpec.objects.create(slug="scale-local", display_name="local", task="language_id", backend="fasttext",
                                         source_kind="package", source="x/y", tier="local")
        premium = ModelSpec.objects.create(slug="scale-premium", display_name="premium", task="language_id",
                                           backend="openai", source_kind="provider", source="gpt-x", tier="premium")
        started = time.perf_counter()
        with connection.cursor() as cursor:
            # A bulk load is quicker with the secondary indexes built once afterwards than maintained row by row;
            # they are rebuilt from their own definitions, so the queries below meet the real schema.
            cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'routing_inferencerecord' "
                           "AND indexname <> 'routing_inferencerecord_pkey'")
            indexes = cursor.fetchall()
            for name, _ in indexes:
                cursor.execute(f'DROP INDEX "{name}"')
            # The rows are right by construction: skip a foreign-key check per row and key (superusers only,
            # as the embedded server's is; elsewhere the checks simply run).
            replica = _try(cursor, "SET session_replication_role = replica")
            cursor.execute(INSERT, {"first": first.pk, "second": second.pk, "local": local.pk, "premium": premium.pk,
                                    "spread": SPREAD_SECONDS, "rows": ROWS})
            loaded = time.perf_counter() - started
            if replica:
                cursor.execute("SET session_replication_role = origin")
            for _, definition in indexes:
                cursor.execute(definition)
            cursor.execute("ANALYZE routing_inferencerecord")
        inserted = time.perf_counter() - started
        started = time.perf_counter()
        rollup(today() - timedelta(days=30), today())
        rolled = time.perf_counter() - started
        print(f"\n{ROWS:,} records inserted in {inserted:.1f} s ({loaded:.1f} s the rows, the rest {len(indexes)} "
              f"indexes and ANALYZE), rolled up in {rolled:.1f} s")
        try:
            yield {"first": first, "second": second}
        finally:
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE routing_inferencerecord CASCADE")
            UsageDaily.objects.filter(tenant__in=[first, second]).delete()
            Tenant.objects.filter(pk__in=[first.pk, second.pk]).delete()
            ModelSpec.objects.filter(pk__in=[local.pk, premium.pk]).delete()


def _try(cursor, statement: str) -> bool:
    from django.db import DatabaseError

    try:
        cursor.execute(statement)
    except DatabaseError:
        return False
    return True


def pinned(client, url: str, limit: int, **query: object):
    """GET `url`, assert it answered and cost at most `limit` queries; returns the response and their SQL."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, query)
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
    assert response.status_code == 200, response.content[:500]
    assert len(queries) <= limit, "\n".join(query["sql"][:300] for query in queries.captured_queries)
    return response, [captured["sql"] for captured in queries.captured_queries]


def test_the_million_rows_are_there(million, db):
    assert InferenceRecord.objects.filter(tenant=million["first"]).count() == ROWS * 3 // 4


def test_the_dashboard_over_thirty_days_costs_a_fixed_number_of_queries(operator, million):
    response, _ = pinned(operator, DASHBOARD, 12)
    assert response.context["totals"]["requests"] >= ROWS - 2000  # the rollups hold (nearly) every record
    response, _ = pinned(operator, DASHBOARD, 12, tenant="scale-one")
    assert {row["model_slug"] for row in response.context["latency"]} == {"scale-local", "scale-premium"}


def test_the_hourly_dashboard_of_one_tenant_costs_a_fixed_number_of_queries(operator, million):
    day = today() - timedelta(days=3)
    response, _ = pinned(operator, DASHBOARD, 12, tenant="scale-two", start=day.isoformat(), end=day.isoformat())
    data = response.context["chart_data"]
    assert data["granularity"] == "hour"
    assert sum(data["local_requests"]) + sum(data["premium_requests"]) == pytest.approx(86400 / SPREAD_SECONDS / 4, rel=0.01)


@pytest.mark.parametrize("query", [
    {}, {"status__exact": "error"}, {"status__exact": "escalated"}, {"model_slug": "scale-premium"},
    {"created_at__gte": "2000-01-01T00:00:00+00:00"}, {"q": "scale-17"}, {"q": "scale-premium"}, {"_facets": "True"},
])
def test_the_record_list_never_counts_the_whole_table(operator, million, query):
    response, queries = pinned(operator, RECORDS, 8, **query)
    assert 'class="paginator"' in response.content.decode()
    counts = [sql for sql in queries if "COUNT(" in sql.upper()]
    assert counts and all("LIMIT 10001" in sql for sql in counts)
    assert not [sql for sql in queries if "DISTINCT" in sql.upper()]  # no filter lists the records' values


def test_the_tenant_filter_pages_through_its_index(operator, million):
    response, _ = pinned(operator, RECORDS, 8, tenant__id__exact=million["second"].pk, p=3)
    assert response.context["cl"].result_count > 10_000  # the planner's estimate beyond the exact cap


def test_a_trace_costs_a_fixed_number_of_queries(operator, million):
    record = InferenceRecord.objects.filter(tenant=million["first"], status="escalated").only("pk").first()
    response, _ = pinned(operator, f"{RECORDS}{record.pk}/change/", 6)
    assert 'class="trace-attempt current"' in response.content.decode()


def test_the_export_is_bounded_and_streamed(operator, million, monkeypatch):
    from routing import admin as routing_admin

    monkeypatch.setattr(routing_admin, "EXPORT_MAX_ROWS", 5000)
    response, _ = pinned(operator, f"{RECORDS}export/", 11, status__exact="error")
    assert response["X-Export-Truncated"] == "5000"
