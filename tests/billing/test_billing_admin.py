"""The billing admin: budgets with sub-limits and alert settings, alerts, daily usage with CSV exports and reports."""
from __future__ import annotations

import csv
import io
import re
from datetime import date, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone

from billing.models import Alert, Budget, SpendLimit, UsageDaily
from billing.usage import rollup
from tenants.services import create_tenant
from tests.billing.test_usage import at, provider_model, record
from tests.conftest import make_caller

USAGE = "/admin/billing/usagedaily/"


def rows_of(response) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def usage(alice, bob, starter):
    """Alice: local language ID on 1–3 March and a premium model on 2 March; Bob: language ID on 2 March."""
    premium = provider_model()
    for day, cost in [(1, "0.001"), (2, "0.002"), (3, "0.004")]:
        record(alice, at(date(2026, 3, day)), cost=cost, latency_ms=10)
    record(alice, at(date(2026, 3, 2)), spec=premium, unit="tokens", units_in=100, units_out=50, cost="0.25", latency_ms=300)
    record(bob, at(date(2026, 3, 2)), cost="0.5")
    rollup(date(2026, 3, 1), date(2026, 3, 3))


# --- daily usage --------------------------------------------------------------------------------------
def test_the_usage_list_filters_and_links_to_exports_and_reports(admin_client, alice, usage):
    page = admin_client.get(USAGE, {"tenant__id__exact": alice.tenant.pk, "is_local__exact": "0"})
    html = page.content.decode()
    assert page.status_code == 200
    assert "gpt-fake" in html and "lid-176" not in html.split('id="result_list"')[1]
    export = re.search(r'href="([^"]*/export/[^"]*)"', html).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(export).query) == {"tenant__id__exact": [str(alice.tenant.pk)], "is_local__exact": ["0"]}
    assert f"{USAGE}over-time/" in html and f"{USAGE}top-models/" in html
    assert admin_client.get(USAGE, {"day__year": "2026", "day__month": "3", "task__exact": "language_id"}).status_code == 200
    # The links of the reports: one day, and a range searched for a model.
    one_day = admin_client.get(USAGE, {"day": "2026-03-02"}).content.decode().split('id="result_list"')[1]
    assert "gpt-fake" in one_day and "bravo" in one_day
    searched = admin_client.get(USAGE, {"day__gte": "2026-03-03", "day__lte": "2026-03-31", "q": "lid-176"})
    assert searched.context["cl"].result_count == 1


def test_the_billing_index_links_to_the_reports(admin_client, db):
    html = admin_client.get("/admin/billing/").content.decode()
    assert f"{USAGE}over-time/" in html and f"{USAGE}top-models/" in html and f"{USAGE}export/" in html
    assert "Daily usage" in admin_client.get("/admin/").content.decode()


def test_the_csv_export_follows_the_list_filters(admin_client, alice, usage):
    rows = rows_of(admin_client.get(f"{USAGE}export/", {"tenant__id__exact": alice.tenant.pk, "o": "1.3"}))
    assert [(r["day"], r["tenant"], r["model"], r["requests"], r["cost"]) for r in rows] == [
        ("2026-03-01", "alpha", "lid-176", "1", "0.001000000000"),
        ("2026-03-02", "alpha", "gpt-fake", "1", "0.250000000000"),
        ("2026-03-02", "alpha", "lid-176", "1", "0.002000000000"),
        ("2026-03-03", "alpha", "lid-176", "1", "0.004000000000"),
    ]
    premium = rows[1]
    assert (premium["unit"], premium["tier"], premium["is_local"], premium["units_in"], premium["units_out"]) == (
        "tokens", "premium", "False", "100.0", "50.0")
    assert premium["mean_latency_ms"] == "300.0"
    everything = rows_of(admin_client.get(f"{USAGE}export/"))
    assert len(everything) == UsageDaily.objects.count() == 5
    assert sum(Decimal(r["cost"]) for r in everything) == Decimal("0.757")


def test_the_export_action_writes_the_selected_rows(admin_client, bob, usage):
    row = UsageDaily.objects.get(tenant=bob.tenant)
    response = admin_client.post(USAGE, {"action": "export_csv", "_selected_action": [row.pk]})
    assert [(r["tenant"], r["day"], r["cost"]) for r in rows_of(response)] == [("bravo", "2026-03-02", "0.500000000000")]


def test_usage_rows_are_read_only(admin_client, usage):
    row = UsageDaily.objects.first()
    assert admin_client.get(f"{USAGE}add/").status_code == 403
    assert admin_client.post(f"{USAGE}{row.pk}/delete/").status_code == 403
    assert admin_client.get(f"{USAGE}{row.pk}/change/").status_code == 200  # view only


def test_usage_over_time_shows_every_day_of_one_tenant(admin_client, alice, usage):
    page = admin_client.get(f"{USAGE}over-time/", {"tenant": "alpha", "start": "2026-02-28", "end": "2026-03-04"})
    html = page.content.decode()
    assert page.status_code == 200
    for day in ["2026-02-28", "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]:  # days without usage too
        assert f">{day}</a>" in html
    assert "4 requests, cost 0.25700000" in html and "75.0% of requests served locally" in html
    assert 'style="width: 100.0%"' in html  # 2 March: the busiest and the dearest day
    assert "0.50000000" not in html  # bob's day is not alice's
    assert f"export/?day__gte=2026-02-28&amp;day__lte=2026-03-04&amp;tenant__id__exact={alice.tenant.pk}" in html
    assert "<script" not in html.split('id="content-main"')[1]


def test_usage_over_time_refuses_a_range_it_cannot_show(admin_client, usage):
    html = admin_client.get(f"{USAGE}over-time/", {"start": "2026-03-04", "end": "2026-03-01"}).content.decode()
    assert "The first day must not be after the last." in html
    html = admin_client.get(f"{USAGE}over-time/", {"start": "2024-01-01", "end": "2026-03-01"}).content.decode()
    assert "at most 366 days" in html
    assert "Select a valid choice" in admin_client.get(f"{USAGE}over-time/", {"tenant": "nobody"}).content.decode()


def test_top_models_puts_the_most_expensive_first(admin_client, usage):
    html = admin_client.get(f"{USAGE}top-models/", {"start": "2026-03-01", "end": "2026-03-31"}).content.decode()
    assert "total cost 0.75700000" in html
    assert html.index(">lid-176<") < html.index(">gpt-fake<")  # bob's 0.5 makes lid-176 the dearest overall
    assert "67.0%" in html and "33.0%" in html  # 0.507 and 0.25 of 0.757
    html = admin_client.get(f"{USAGE}top-models/", {"tenant": "alpha", "start": "2026-03-01", "end": "2026-03-31"}).content.decode()
    assert "total cost 0.25700000" in html
    assert html.index(">gpt-fake<") < html.index(">lid-176<")


def test_reports_need_a_staff_login(client, db):
    for path in ["export/", "over-time/", "top-models/"]:
        response = client.get(f"{USAGE}{path}")
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


# --- alerts -------------------------------------------------------------------------------------------
def test_alerts_are_listed_read_only(admin_client, alice):
    budget = Budget.objects.create(tenant=alice.tenant, limit=Decimal("10"))
    alert = Alert.objects.create(tenant=alice.tenant, budget=budget, period_start=budget.period_start, threshold=80,
                                 spent=Decimal("8.1"), limit=Decimal("10"), email_status="sent", webhook_status="failed",
                                 webhook_attempts=3, last_error="connection refused")
    html = admin_client.get("/admin/billing/alert/").content.decode()
    assert "alpha" in html and "80%" in html and "8.1000 / 10.0000" in html
    assert "Sent" in html and "Failed" in html
    assert admin_client.get("/admin/billing/alert/add/").status_code == 403
    assert "connection refused" in admin_client.get(f"/admin/billing/alert/{alert.pk}/change/").content.decode()
    assert admin_client.post(f"/admin/billing/alert/{alert.pk}/delete/").status_code == 403


# --- budgets ------------------------------------------------------------------------------------------
def budget_form(budget: Budget, **fields) -> dict:
    data = {
        "limit": str(budget.limit), "period": budget.period, "custom_days": "", "at_limit": budget.at_limit,
        "alert_thresholds": ",".join(map(str, budget.alert_thresholds)), "alert_email": budget.alert_email,
        "sub_limits-TOTAL_FORMS": "0", "sub_limits-INITIAL_FORMS": "0",
        "sub_limits-MIN_NUM_FORMS": "0", "sub_limits-MAX_NUM_FORMS": "1000",
    }
    data.update(fields)
    return data


def sub_limit(index: int, **fields) -> dict:
    return {f"sub_limits-{index}-{name}": value for name, value in {"id": "", "api_key": "", "model_slug": "", **fields}.items()}


@pytest.fixture
def budget(alice) -> Budget:
    return Budget.objects.create(tenant=alice.tenant, limit=Decimal("10"), alert_email="ops@alpha.example",
                                 webhook_url="https://alpha.example/hooks/budget", webhook_secret="whsec-do-not-show-me")


def test_the_budget_page_shows_alert_settings_but_never_the_webhook_secret(admin_client, budget):
    html = admin_client.get(f"/admin/billing/budget/{budget.pk}/change/").content.decode()
    assert "ops@alpha.example" in html and "https://alpha.example/hooks/budget" in html
    assert "whsec-do-not-show-me" not in html and "set (never shown)" in html
    assert 'name="webhook_url"' not in html  # the tenant sets it, through the API that checks it and issues the secret
    assert 'name="alert_email"' in html
    assert "sub_limits-TOTAL_FORMS" in html  # the sub-limits inline
    assert "<progress" in html and "over-time/?tenant=alpha" in html
    listing = admin_client.get("/admin/billing/budget/").content.decode()
    assert "<progress" in listing and "ops@alpha.example" in listing


def test_saving_a_budget_keeps_what_requests_spent_meanwhile(admin_client, budget):
    page = admin_client.get(f"/admin/billing/budget/{budget.pk}/change/")
    assert page.status_code == 200
    # A request settles while the operator edits the form.
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("2.5"), reserved=Decimal("0.5"))
    response = admin_client.post(f"/admin/billing/budget/{budget.pk}/change/", budget_form(budget, limit="20"))
    assert response.status_code == 302, response.content.decode()
    budget.refresh_from_db()
    assert (budget.limit, budget.spent, budget.reserved) == (Decimal("20"), Decimal("2.5"), Decimal("0.5"))
    assert budget.webhook_secret == "whsec-do-not-show-me"


def test_changing_the_kind_of_period_starts_the_window_holding_today(admin_client, budget):
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("2.5"))
    response = admin_client.post(f"/admin/billing/budget/{budget.pk}/change/", budget_form(budget, period="daily"),
                                 follow=True)
    assert response.status_code == 200 and "period is now daily: this one runs from" in response.content.decode()
    budget.refresh_from_db()
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    assert (budget.period, budget.period_start, budget.period_end) == ("daily", today, today + timedelta(days=1))
    assert budget.spent == Decimal("2.5")
    # Saving again without touching the period keeps the window.
    admin_client.post(f"/admin/billing/budget/{budget.pk}/change/", budget_form(budget, limit="30"))
    budget.refresh_from_db()
    assert (budget.limit, budget.period_end) == (Decimal("30"), today + timedelta(days=1))


def test_an_operator_can_remove_a_webhook_and_change_the_alert_email(admin_client, budget):
    other = Budget.objects.create(tenant=create_tenant(slug="charlie", name="Charlie"), limit=Decimal("1"),
                                  webhook_url="https://charlie.example/hook", webhook_secret="secret")
    response = admin_client.post("/admin/billing/budget/", {"action": "remove_webhooks", "_selected_action": [budget.pk]})
    assert response.status_code == 302
    budget.refresh_from_db()
    other.refresh_from_db()
    assert (budget.webhook_url, budget.webhook_secret) == ("", "")
    assert other.webhook_url == "https://charlie.example/hook"  # only the selected ones
    url = f"/admin/billing/budget/{budget.pk}/change/"
    assert admin_client.post(url, budget_form(budget, alert_email="billing@alpha.example")).status_code == 302
    budget.refresh_from_db()
    assert budget.alert_email == "billing@alpha.example"


def test_a_limit_below_what_is_spent_is_refused(admin_client, budget):
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("4"))
    budget.refresh_from_db()
    response = admin_client.post(f"/admin/billing/budget/{budget.pk}/change/", budget_form(budget, limit="3"))
    assert response.status_code == 200
    assert "is already spent this period" in response.content.decode()
    budget.refresh_from_db()
    assert budget.limit == Decimal("10")


def test_sub_limits_are_edited_inline_and_only_for_the_tenants_own_keys(admin_client, alice, bob, budget, starter):
    url = f"/admin/billing/budget/{budget.pk}/change/"
    foreign = admin_client.post(url, budget_form(budget, **{"sub_limits-TOTAL_FORMS": "1"},
                                                 **sub_limit(0, api_key=bob.key.pk, limit="1")))
    assert foreign.status_code == 200 and "This key belongs to another tenant." in foreign.content.decode()
    unknown = admin_client.post(url, budget_form(budget, **{"sub_limits-TOTAL_FORMS": "1"},
                                                 **sub_limit(0, model_slug="ghost", limit="1")))
    assert "No model &#x27;ghost&#x27; is registered." in unknown.content.decode()
    assert not SpendLimit.objects.exists()

    other_key = make_caller(alice.tenant, "batch").key
    saved = admin_client.post(url, budget_form(budget, **{"sub_limits-TOTAL_FORMS": "2"},
                                               **sub_limit(0, api_key=other_key.pk, limit="1"),
                                               **sub_limit(1, model_slug="lid-176", limit="2")))
    assert saved.status_code == 302, saved.content.decode()
    assert sorted((str(s.api_key_id or s.model_slug), s.limit) for s in budget.sub_limits.all()) == sorted(
        [(str(other_key.pk), Decimal("1")), ("lid-176", Decimal("2"))])

    # Editing a sub-limit never writes back the spent/held amounts loaded with the form.
    limit = budget.sub_limits.get(model_slug="lid-176")
    SpendLimit.objects.filter(pk=limit.pk).update(spent=Decimal("1.5"))
    fields = budget_form(budget, **{"sub_limits-TOTAL_FORMS": "1", "sub_limits-INITIAL_FORMS": "1"},
                         **sub_limit(0, id=limit.pk, budget=budget.pk, model_slug="lid-176", limit="3"))
    assert admin_client.post(url, fields).status_code == 302
    limit.refresh_from_db()
    assert (limit.limit, limit.spent) == (Decimal("3"), Decimal("1.5"))


def test_a_new_budget_can_be_added(admin_client, alice):
    data = budget_form(Budget(limit=Decimal("5"), alert_thresholds=[50, 100]), tenant=alice.tenant.pk)
    response = admin_client.post("/admin/billing/budget/add/", data)
    assert response.status_code == 302, response.content.decode()
    budget = Budget.objects.get(tenant=alice.tenant)
    assert (budget.limit, budget.alert_thresholds, budget.spent) == (Decimal("5"), [50, 100], Decimal("0"))
    assert budget.period_end - budget.period_start >= timedelta(days=28)
