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
from tests.console.scale import ROWS, SPREAD_SECONDS, load_records

@pytest.fixture(scope="module")
def million(django_db_setup, django_db_blocker):
    """A million committed records of two tenants and two models over ~29 days, rolled up; removed afterwards."""
    with django_db_blocker.unblock():
        loaded = load_records("scale")
        started = time.perf_counter()
        rollup(today() - timedelta(days=30), today())
        rolled = time.perf_counter() - started
        print(f"\n{ROWS:,} records inserted in {loaded.seconds:.1f} s ({loaded.rows_seconds:.1f} s the rows, the rest "
              f"{loaded.indexes} indexes and ANALYZE), rolled up in {rolled:.1f} s")
        try:
            yield {"first": loaded.first, "second": loaded.second}
        finally:
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE routing_inferencerecord CASCADE")
            UsageDaily.objects.filter(tenant__in=[loaded.first, loaded.second]).delete()
            Tenant.objects.filter(pk__in=[loaded.first.pk, loaded.second.pk]).delete()
            ModelSpec.objects.filter(pk__in=[loaded.local.pk, loaded.premium.pk]).delete()


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
