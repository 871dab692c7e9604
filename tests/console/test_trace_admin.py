"""Inference review: a record's page lays out its whole request as a trace; the changelist filters by index,
never counts the whole table, and exports what it shows as CSV."""
from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from routing.models import InferenceRecord, QualitySignal, RoutingPolicy
from tests.console.conftest import RECORDS, record


@pytest.fixture
def escalated_request(alice, models):
    """A request answered locally below the floor, escalated to premium, with every kind of signal."""
    policy = RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-local", "gpt-premium"],
                                          confidence_floor=0.6)
    at = datetime.now(UTC) - timedelta(minutes=5)
    first = record(alice.tenant, models["local"], at, request_id="req-trace-0001", api_key=alice.key, policy=policy,
                   status="escalated", escalation_cause="low_confidence", items=2, items_escalated=1, score=0.41,
                   confidence=0.41, floor=0.6, latency_ms=12.345, queue_ms=1.2, compute_ms=11.1,
                   reserved_cost=Decimal("0.000020"), cost=Decimal("0.000004"),
                   routing_reason="confidence 0.410 below the floor 0.600")
    second = record(alice.tenant, models["premium"], at + timedelta(milliseconds=20), request_id="req-trace-0001",
                    api_key=alice.key, policy=policy, escalated_from=first, latency_ms=1234.5,
                    reserved_cost=Decimal("0.01"), cost=Decimal("0.0042"), routing_reason="escalated: premium answers")
    QualitySignal.objects.create(record=first, source="escalation", agreement=0.0, teacher=second, detail="labels differ")
    QualitySignal.objects.create(record=first, source="operator", agreement=1.0, created_by="ops-anna")
    record(alice.tenant, models["local"], at, request_id="req-other-0002")  # another request: not in the trace
    return first, second


def test_the_trace_shows_every_attempt_in_order_with_why_it_moved_on(operator, escalated_request):
    first, second = escalated_request
    page = operator.get(f"{RECORDS}{second.pk}/change/").content.decode()
    assert page.count('class="trace-attempt') == 2
    assert page.index(f'data-record="{first.pk}"') < page.index(f'data-record="{second.pk}"')
    assert f'class="trace-attempt current" data-record="{second.pk}"' in page
    assert "Below the floor" in page and "(1 of 2 items)" in page and "confidence 0.410 below the floor 0.600" in page
    assert "lid-local → gpt-premium" in page  # the candidates
    assert "0.410" in page and "0.600" in page  # score and floor in force
    assert "12.3 ms" in page and "1.23 s" in page  # milliseconds for people
    assert "$0.000020 → $0.0000040" in page and "$0.01 → $0.0042" in page  # reserved → charged
    assert "Reserved $0.01, charged $0.0042" in page
    assert "Escalation pair: 0.00" in page and "Operator review: 1.00 (ops-anna)" in page
    assert "req-other-0002" not in page


def test_the_trace_links_tenant_key_model_and_policy(operator, escalated_request, alice):
    first, _ = escalated_request
    page = operator.get(f"{RECORDS}{first.pk}/change/").content.decode()
    assert f'/admin/tenants/tenant/{alice.tenant.pk}/change/' in page
    assert f'/admin/tenants/apikey/{alice.key.pk}/change/' in page
    assert f'/admin/registry/modelspec/{first.model_id}/change/' in page
    assert f'/admin/routing/routingpolicy/{first.policy_id}/change/' in page


def test_the_trace_costs_a_fixed_number_of_queries(operator, escalated_request, django_assert_max_num_queries):
    _, second = escalated_request
    with django_assert_max_num_queries(8):
        assert operator.get(f"{RECORDS}{second.pk}/change/").status_code == 200


def test_mark_good_and_bad_still_write_operator_signals(operator, escalated_request):
    first, second = escalated_request
    operator.post(RECORDS, {"action": "mark_bad", "_selected_action": [str(first.pk), str(second.pk)]})
    assert set(QualitySignal.objects.filter(source="operator").values_list("record_id", "agreement")) == {
        (first.pk, 0.0), (second.pk, 0.0)}


def test_the_export_streams_the_filtered_changelist(operator, escalated_request):
    response = operator.get(f"{RECORDS}export/", {"status__exact": "escalated"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["request_id"] for row in rows] == ["req-trace-0001"]
    assert rows[0]["reserved_cost"] == "0.000020000000" and rows[0]["escalation_cause"] == "low_confidence"
    assert "X-Export-Truncated" not in response


def test_the_export_defuses_spreadsheet_formulas(operator, alice, models):
    record(alice.tenant, models["local"], datetime.now(UTC), input_preview="=HYPERLINK(\"http://x\")")
    body = b"".join(operator.get(f"{RECORDS}export/").streaming_content).decode()
    assert "'=HYPERLINK" in body


def test_the_export_is_bounded(operator, alice, models, monkeypatch):
    from routing import admin as routing_admin

    monkeypatch.setattr(routing_admin, "EXPORT_MAX_ROWS", 2)
    now = datetime.now(UTC)
    for i in range(3):
        record(alice.tenant, models["local"], now - timedelta(seconds=i))
    response = operator.get(f"{RECORDS}export/")
    assert response["X-Export-Truncated"] == "2"
    assert len(b"".join(response.streaming_content).decode().strip().splitlines()) == 1 + 2


def test_the_changelist_filters_and_finds_a_record_by_id_or_request(operator, escalated_request):
    first, second = escalated_request
    page = operator.get(RECORDS, {"model_slug": "gpt-premium"}).content.decode()
    assert str(second.pk) in page and str(first.pk) not in page
    assert str(first.pk) in operator.get(RECORDS, {"q": str(first.pk)}).content.decode()
    page = operator.get(RECORDS, {"q": "req-trace-0001"}).content.decode()
    assert str(first.pk) in page and str(second.pk) in page
    assert 'id="export-records-csv"' in page


def test_the_changelist_and_export_refuse_others(client, customer, staff_without_permissions, escalated_request):
    for url in (RECORDS, f"{RECORDS}export/", f"{RECORDS}{escalated_request[0].pk}/change/"):
        assert client.get(url)["Location"].startswith("/admin/login/")
        assert customer.get(url)["Location"].startswith("/admin/login/")
        assert staff_without_permissions.get(url).status_code == 403


def test_a_missing_record_is_not_found_and_a_malformed_id_too(operator, db):
    assert operator.get(f"{RECORDS}00000000-0000-0000-0000-000000000000/change/").status_code == 302  # admin: "doesn't exist"
    assert operator.get(f"{RECORDS}not-a-uuid/change/").status_code == 302
    assert InferenceRecord.objects.count() == 0


def test_every_field_of_the_record_is_on_its_page_once(operator, escalated_request):
    from routing.admin import InferenceRecordAdmin

    shown = [name for _, options in InferenceRecordAdmin.fieldsets for name in options["fields"]]
    raw = {"reserved_cost": "reserved", "cost": "money", "latency_ms": "latency", "queue_ms": "queue", "compute_ms": "compute"}
    assert len(shown) == len(set(shown))
    assert {raw.get(field.name, field.name) for field in InferenceRecord._meta.fields} == set(shown)
    page = operator.get(f"{RECORDS}{escalated_request[0].pk}/change/").content.decode()
    assert "Cost and time" in page and "1.20 ms" in page


def test_marking_is_refused_beyond_a_thousand_records(operator, escalated_request, monkeypatch):
    from routing import admin as routing_admin

    monkeypatch.setattr(routing_admin, "REVIEW_MAX_RECORDS", 1)
    first, second = escalated_request
    response = operator.post(RECORDS, {"action": "mark_good", "_selected_action": [str(first.pk), str(second.pk)]},
                             follow=True)
    assert "Mark at most 1 records at a time." in response.content.decode()
    assert not QualitySignal.objects.filter(source="operator", agreement=1.0, record=second).exists()


def test_the_quality_signal_list_counts_no_more_than_it_shows(operator, escalated_request):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        page = operator.get("/admin/routing/qualitysignal/").content.decode()
    assert "Escalation pair" in page or "escalation" in page
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 10001" in sql for sql in counts)
