"""The operator dashboard: staff only, and every figure equals the records it summarizes."""
from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest

from billing.models import Alert, Budget
from billing.usage import rollup, today
from routing.models import RoutingPolicy, ThresholdChange
from tests.console.conftest import DASHBOARD, record


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear between the two nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.fixture
def traffic(tenant_a, tenant_b, models):
    """Three days of alpha's answers (and bravo's, which a tenant filter must leave out)."""
    first = today() - timedelta(days=5)
    local, premium = models["local"], models["premium"]
    latencies = {"lid-local": [], "gpt-premium": []}
    for offset in range(3):
        noon = datetime.combine(first + timedelta(days=offset), time(12), tzinfo=UTC)
        for i in range(4 + offset):
            latency = 5.0 + 3 * i + offset
            record(tenant_a, local, noon + timedelta(minutes=i), latency_ms=latency, cost=Decimal("0.000010"))
            latencies["lid-local"].append(latency)
        record(tenant_a, premium, noon + timedelta(minutes=30), latency_ms=400.0 + offset, cost=Decimal("0.002500"))
        latencies["gpt-premium"].append(400.0 + offset)
    day = datetime.combine(first, time(12), tzinfo=UTC)
    record(tenant_a, local, day + timedelta(hours=1), status="escalated", escalation_cause="low_confidence",
           latency_ms=7.0, cost=Decimal("0.000010"))
    latencies["lid-local"].append(7.0)
    record(tenant_a, local, day + timedelta(hours=2), status="error", latency_ms=None, error_code="model_error")
    record(tenant_a, local, day + timedelta(hours=3), cached=True, latency_ms=0.5)
    record(tenant_a, local, day + timedelta(hours=4), status="pending", latency_ms=None)  # not known yet: left out
    record(tenant_a, premium, day + timedelta(hours=5), purpose="evaluation", cost=Decimal("1"))  # the allowance's
    record(tenant_b, premium, day + timedelta(hours=6), latency_ms=999.0, cost=Decimal("5"))
    rollup(first, first + timedelta(days=2))
    return {"first": first, "last": first + timedelta(days=2), "latencies": latencies}


def test_it_refuses_anonymous_visitors_and_users_who_are_not_staff(client, customer, db):
    assert client.get(DASHBOARD)["Location"].startswith("/admin/login/")
    assert customer.get(DASHBOARD)["Location"].startswith("/admin/login/")


def test_it_refuses_staff_who_may_not_see_inference_records(staff_without_permissions):
    assert staff_without_permissions.get(DASHBOARD).status_code == 403


def test_the_admin_index_links_the_dashboard(operator):
    page = operator.get("/admin/").content.decode()
    assert f'href="{DASHBOARD}" id="dashboard-link"' in page


def test_its_totals_and_rates_equal_the_records(operator, traffic, tenant_a):
    response = operator.get(DASHBOARD, {"tenant": "alpha", "start": traffic["first"], "end": traffic["last"]})
    assert response.status_code == 200
    totals = response.context["totals"]
    # 4+5+6 local answers, 3 premium, 1 escalated, 1 error, 1 cached; not the pending one, the evaluation or bravo's.
    assert totals["requests"] == 15 + 3 + 3
    assert totals["local_requests"] == 18 and totals["premium_requests"] == 3
    assert totals["cost"] == Decimal("0.000010") * 16 + Decimal("0.0075")
    assert totals["premium_cost"] == Decimal("0.0075")
    assert totals["local_share"] == pytest.approx(18 / 21)
    assert totals["error_rate"] == pytest.approx(1 / 21)
    assert totals["escalation_rate"] == pytest.approx(1 / 21)
    assert totals["cache_rate"] == pytest.approx(1 / 21)
    page = response.content.decode()
    assert 'data-figure="local-share">Served locally<strong>85.7%</strong>' in page
    assert "$0.0077" in page  # the cost as money: 0.00766


def test_its_daily_series_splits_local_and_premium(operator, traffic):
    response = operator.get(DASHBOARD, {"tenant": "alpha", "start": traffic["first"], "end": traffic["last"]})
    data = response.context["chart_data"]
    assert data["granularity"] == "day"
    assert data["labels"] == [(traffic["first"] + timedelta(days=d)).isoformat() for d in range(3)]
    assert data["local_requests"] == [4 + 3, 5, 6]
    assert data["premium_requests"] == [1, 1, 1]
    assert data["premium_cost"] == [0.0025, 0.0025, 0.0025]


def test_a_short_range_is_hourly_from_the_records(operator, traffic):
    day = traffic["first"]
    response = operator.get(DASHBOARD, {"tenant": "alpha", "start": day, "end": day})
    data = response.context["chart_data"]
    assert data["granularity"] == "hour" and len(data["labels"]) == 24
    assert data["local_requests"][12] == 4 and data["premium_requests"][12] == 1
    assert [data["local_requests"][h] for h in (13, 14, 15, 16)] == [1, 1, 1, 0]  # escalated, error, cached; pending out
    assert data["premium_requests"][17] == 0  # shadow evaluation is not a tenant's answer
    assert sum(data["local_requests"]) + sum(data["premium_requests"]) == 4 + 1 + 3


def test_latency_percentiles_per_model_are_postgresqls_over_the_range(operator, traffic):
    response = operator.get(DASHBOARD, {"tenant": "alpha", "start": traffic["first"], "end": traffic["last"]})
    rows = {row["model_slug"]: row for row in response.context["latency"]}
    for slug, values in traffic["latencies"].items():
        assert rows[slug]["requests"] == len(values)
        assert rows[slug]["p50"] == pytest.approx(percentile_cont(values, 0.5))
        assert rows[slug]["p95"] == pytest.approx(percentile_cont(values, 0.95))
    assert 'id="latency-table"' in response.content.decode()


def test_all_tenants_include_bravo(operator, traffic):
    response = operator.get(DASHBOARD, {"start": traffic["first"], "end": traffic["last"]})
    assert response.context["totals"]["requests"] == 22
    assert response.context["totals"]["premium_cost"] == Decimal("5.0075")


def test_budgets_show_spent_held_limit_and_the_projection(operator, tenant_a):
    now = datetime.now(UTC)
    Budget.objects.create(tenant=tenant_a, limit=Decimal("100"), spent=Decimal("30"), reserved=Decimal("2"),
                          period_start=now - timedelta(days=10), period_end=now + timedelta(days=20))
    response = operator.get(DASHBOARD, {"tenant": "alpha"})
    (row,) = response.context["budgets"]
    assert (row["spent"], row["held"], row["limit"]) == (Decimal("30"), Decimal("2"), Decimal("100"))
    assert row["used_share"] == pytest.approx(0.32)
    assert row["projected"] == pytest.approx(Decimal("90"), rel=Decimal("0.001"))  # 30 in a third of the period
    assert "(over the limit)" not in response.content.decode()


def test_policies_show_their_curve_and_floor_decisions_and_drift(operator, tenant_a):
    policy = RoutingPolicy.objects.create(tenant=tenant_a, task="language_id", confidence_floor=0.4,
                                          drift_flagged_at=datetime.now(UTC), drift_detail="confidences moved")
    curve = [{"floor": f / 10, "premium_share": f / 10, "quality": 0.6 + f / 25, "pgr": f / 10, "cost": 0.001} for f in range(11)]
    ThresholdChange.objects.create(policy=policy, old=0.5, new=0.4, decided_by="tuner", reason="Lower: quality holds.",
                                   evidence={"curve": curve, "current": curve[4], "apgr": 0.5, "samples": 300})
    Alert.objects.create(kind="drift", tenant=tenant_a, period_start=datetime.now(UTC), subject=str(policy),
                         message="PSI 0.4")
    response = operator.get(DASHBOARD, {"tenant": "alpha"})
    page = response.content.decode()
    assert 'aria-label="routing curve"' in page
    assert "Lower: quality holds." in page and "0.500 → 0.400" in page
    assert "Drifting now" in page and "PSI 0.4" in page
    (line,) = response.context["chart_data"]["thresholds"]
    assert [point["y"] for point in line["points"]] == [0.5, 0.4, 0.4]


def test_it_shows_the_model_pool_and_draws_charts_from_vendored_chartjs(operator, db):
    response = operator.get(DASHBOARD)
    page = response.content.decode()
    assert response.context["pool"]["error"] == ""
    assert response.context["pool"]["servers"]  # the test model server answered
    assert "/static/vendor/chart.js/chart.umd.min.js" in page and "https://" not in page.split("dashboard-data")[1]
    for chart in ("chart-requests", "chart-cost", "chart-latency", "chart-thresholds"):
        assert f'<canvas id="{chart}">' in page
    assert operator.get("/static/vendor/chart.js/chart.umd.min.js").status_code == 200


@pytest.mark.parametrize("query, error", [
    ({"start": "2026-02-10", "end": "2026-02-01"}, "The first day must not be after the last."),
    ({"start": "2020-01-01", "end": "2026-01-01"}, "The range may span at most 366 days."),
    ({"start": "yesterday"}, "Enter a valid date."),
    ({"tenant": "nobody"}, "Select a valid choice."),
])
def test_a_bad_range_is_an_error_on_the_form_not_a_crash(operator, query, error):
    response = operator.get(DASHBOARD, query)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert "totals" not in response.context


def test_without_a_query_it_shows_the_last_thirty_days_and_says_so_in_the_form(operator, db):
    response = operator.get(DASHBOARD)
    span = response.context["span"]
    assert (span.start, span.end) == (today() - timedelta(days=29), today())
    assert f'value="{today().isoformat()}"' in response.content.decode()


def test_a_model_server_that_does_not_answer_is_shown_as_such(operator, db, monkeypatch, tmp_path):
    from registry import services

    monkeypatch.setattr(services, "_pool", services.fleet([f"unix://{tmp_path / 'gone.sock'}"]))
    response = operator.get(DASHBOARD)
    assert response.status_code == 200
    (state,) = response.context["pool"]["servers"].values()
    assert state["ok"] is False
    assert "unavailable:" in response.content.decode()
