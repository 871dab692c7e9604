"""Daily usage: the rollup (idempotent, equal to the records, catching up after downtime) and GET /v1/usage."""
from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from billing.models import UsageDaily
from billing.tasks import ensure_schedules, rollup_usage
from billing.usage import rollup
from registry.models import ModelSpec
from routing.models import InferenceRecord
from tests.routing.conftest import post

FIELDS = ["tenant_id", "day", "model_slug", "task", "unit", "tier", "is_local", "requests", "ok", "errors", "rejected",
          "escalated", "cached", "units_in", "units_out", "cost", "latency_ms_sum", "compute_ms_sum"]


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def provider_model(slug: str = "gpt-fake") -> ModelSpec:
    return ModelSpec.objects.create(slug=slug, display_name=slug, task="generation", backend="openai",
                                    source_kind="provider", source=f"{slug}-upstream", tier="premium")


def record(caller, when: datetime, *, spec: ModelSpec | None = None, status: str = "ok", cost: str = "0.001",
           task: str = "language_id", unit: str = "characters", units_in: float = 10, units_out: float = 1,
           latency_ms: float | None = 20.0, compute_ms: float | None = 5.0, cached: bool = False) -> InferenceRecord:
    """A record as the router leaves it, on any day: traffic of the past cannot be made through the API."""
    slug = spec.slug if spec else "lid-176"
    return InferenceRecord.objects.create(
        request_id=f"req-{when:%Y%m%d%H%M%S%f}", tenant=caller.tenant, api_key=caller.key, task=spec.task if spec else task,
        model=spec or ModelSpec.objects.filter(slug=slug).first(), model_slug=slug, tier=spec.tier if spec else "local",
        status=status, created_at=when, unit=unit, units_in=units_in, units_out=units_out, cost=Decimal(cost),
        latency_ms=latency_ms, compute_ms=compute_ms, cached=cached,
    )


def snapshot() -> list[dict]:
    return list(UsageDaily.objects.order_by("tenant_id", "day", "model_slug", "task", "unit").values(*FIELDS))


def expected_from_records() -> list[dict]:
    """The same numbers, added up in Python from every completed record."""
    groups: dict[tuple, dict] = defaultdict(lambda: {name: 0 for name in FIELDS[5:]})
    for r in InferenceRecord.objects.exclude(status="pending").select_related("model"):
        key = (r.tenant_id, r.created_at.astimezone(UTC).date(), r.model_slug, r.task, r.unit)
        row = groups[key]
        row["tier"] = r.tier
        row["is_local"] = r.model.is_local if r.model else r.tier == "local"
        row["requests"] += 1
        row["ok"] += r.status == "ok"
        row["errors"] += r.status in ("error", "abandoned")
        row["rejected"] += r.status == "rejected"
        row["escalated"] += r.status == "escalated"
        row["cached"] += r.cached
        row["units_in"] += r.units_in
        row["units_out"] += r.units_out
        row["cost"] += r.cost
        row["latency_ms_sum"] += r.latency_ms or 0
        row["compute_ms_sum"] += r.compute_ms or 0
    return [dict(zip(FIELDS[:5], key), **row) for key, row in sorted(groups.items(), key=lambda item: item[0])]


def close(actual: list[dict], expected: list[dict]) -> bool:
    """Float sums may differ in the last bits between PostgreSQL and Python."""
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        for name in FIELDS:
            if isinstance(e[name], float):
                assert a[name] == pytest.approx(e[name]), name
            else:
                assert a[name] == e[name], (name, a, e)
    return True


# --- the rollup ---------------------------------------------------------------------------------------
def test_the_rollup_equals_the_records_and_running_it_twice_changes_nothing(api, alice, bob, starter):
    for text in ["Bonjour tout le monde", "Guten Morgen zusammen", "Buenos días a todos"]:
        assert post(api, "/v1/detect-language", {"text": text}, alice).status_code == 200
    assert post(api, "/v1/detect-language", {"texts": ["Good morning", "Buongiorno"]}, bob).status_code == 200
    premium = provider_model()
    today = datetime.now(UTC).date()
    record(alice, at(today - timedelta(days=2)), status="escalated", cost="0.002")
    record(alice, at(today - timedelta(days=2)), spec=premium, unit="tokens", units_in=120, units_out=40, cost="0.35")
    record(alice, at(today - timedelta(days=1), 0), status="error", latency_ms=None, compute_ms=None, cost="0")
    record(alice, at(today - timedelta(days=1), 23), status="ok", cached=True, cost="0")
    record(alice, at(today - timedelta(days=1), 23), status="abandoned", latency_ms=None, compute_ms=None, cost="0")
    record(bob, at(today - timedelta(days=1)), status="rejected", cost="0")
    record(bob, at(today - timedelta(days=1)), status="pending", cost="0")  # not settled: left out

    written = rollup(today - timedelta(days=3), today)
    first = snapshot()
    assert written == len(first) == 6
    assert close(first, expected_from_records())
    ids = set(UsageDaily.objects.values_list("pk", flat=True))

    assert rollup(today - timedelta(days=3), today) == written
    assert snapshot() == first
    assert set(UsageDaily.objects.values_list("pk", flat=True)) == ids  # recomputed in place, not re-created

    local = UsageDaily.objects.get(tenant=alice.tenant, day=today, model_slug="lid-176")
    assert (local.requests, local.ok, local.is_local, local.tier, local.unit) == (3, 3, True, "local", "characters")
    assert local.cost == sum(r.cost for r in InferenceRecord.objects.filter(tenant=alice.tenant, created_at__date=today))
    paid = UsageDaily.objects.get(model_slug="gpt-fake")
    assert (paid.is_local, paid.tier, paid.units_in, paid.units_out, paid.cost) == (False, "premium", 120, 40, Decimal("0.35"))
    mixed = UsageDaily.objects.get(tenant=alice.tenant, day=today - timedelta(days=1))
    assert (mixed.requests, mixed.ok, mixed.errors, mixed.cached) == (3, 1, 2, 1)


def test_a_day_is_recomputed_whole_rows_that_no_longer_exist_go(alice, starter):
    day = date(2026, 3, 10)
    gone = record(alice, at(day), task="classification")
    record(alice, at(day))
    rollup(day, day)
    assert UsageDaily.objects.filter(day=day).count() == 2
    gone.delete()
    InferenceRecord.objects.filter(tenant=alice.tenant).update(cost=Decimal("0.5"))
    assert rollup(day, day) == 1
    [row] = UsageDaily.objects.filter(day=day)
    assert (row.task, row.cost) == ("language_id", Decimal("0.5"))


def test_a_pending_record_counts_once_it_completes(alice, starter):
    day = datetime.now(UTC).date()
    pending = record(alice, at(day, 0), status="pending", cost="0")
    assert rollup() == 0
    assert not UsageDaily.objects.exists()
    InferenceRecord.objects.filter(pk=pending.pk).update(status="ok", cost=Decimal("0.01"))
    assert rollup() == 1
    assert UsageDaily.objects.get().cost == Decimal("0.01")


def test_with_nothing_recorded_there_is_nothing_to_roll_up(db):
    assert rollup() == 0
    assert not UsageDaily.objects.exists()


def test_it_catches_up_after_downtime_from_the_day_before_the_last_rolled_up_day(alice, bob, starter):
    first = date(2026, 5, 1)
    for offset in range(6):  # traffic every day, 1 to 6 May; the job is down from the 3rd to the 6th
        record(alice, at(first + timedelta(days=offset)), cost=str(offset + 1))
    with time_machine.travel(at(first + timedelta(days=1), 18), tick=False):
        rollup()  # nothing rolled up yet: from the first record's day through today
    assert sorted(UsageDaily.objects.values_list("day", flat=True)) == [first, first + timedelta(days=1)]

    late = record(bob, at(first + timedelta(days=1), 23))  # written after that run, on a day it covered
    with time_machine.travel(at(first + timedelta(days=5), 9), tick=False):
        rollup()
    assert sorted(UsageDaily.objects.filter(tenant=alice.tenant).values_list("day", flat=True)) == [
        first + timedelta(days=offset) for offset in range(6)
    ]
    assert UsageDaily.objects.filter(tenant=bob.tenant, day=late.created_at.date()).exists()
    assert close(snapshot(), expected_from_records())

    # Days before yesterday are settled: the default run leaves them alone; an explicit range redoes them.
    record(bob, at(first + timedelta(days=2)))
    with time_machine.travel(at(first + timedelta(days=5), 10), tick=False):
        rollup()
        assert not UsageDaily.objects.filter(tenant=bob.tenant, day=first + timedelta(days=2)).exists()
        rollup(first + timedelta(days=2), first + timedelta(days=2))
    assert close(snapshot(), expected_from_records())


def test_the_rollup_runs_every_five_minutes(alice, starter):
    from django_q.models import Schedule

    ensure_schedules()
    ensure_schedules()  # idempotent
    schedule = Schedule.objects.get(name="billing: roll up daily usage")
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == ("billing.tasks.rollup_usage", "I", 5, -1)
    record(alice, datetime.now(UTC))
    assert rollup_usage() == 1


# --- GET /v1/usage ------------------------------------------------------------------------------------
def usage(api, caller, **params):
    return api.get("/v1/usage", params, **caller.auth)


@pytest.fixture
def march(alice, bob, starter):
    """Alice: local language ID on 1 and 2 March, a premium model on 2 March, one day in February and April.
    Bob: one expensive day in March."""
    premium = provider_model()
    record(alice, at(date(2026, 2, 28)), cost="9")
    record(alice, at(date(2026, 3, 1)), cost="0.001", latency_ms=10)
    record(alice, at(date(2026, 3, 1)), cost="0.002", latency_ms=30, units_in=20, units_out=2)
    record(alice, at(date(2026, 3, 2)), cost="0.001", status="escalated", latency_ms=20)
    record(alice, at(date(2026, 3, 2)), spec=premium, unit="tokens", units_in=100, units_out=50, cost="0.25", latency_ms=400)
    record(alice, at(date(2026, 3, 2)), task="classification", cost="0", status="rejected", latency_ms=2)
    record(alice, at(date(2026, 4, 1)), cost="7")
    record(bob, at(date(2026, 3, 5)), spec=premium, unit="tokens", units_in=1000, units_out=900, cost="3.5")
    rollup(date(2026, 2, 1), date(2026, 4, 30))


def test_usage_by_day_gives_totals_and_one_row_per_day(api, alice, march):
    body = usage(api, alice, **{"from": "2026-03-01", "to": "2026-03-31"}).json()
    assert (body["from"], body["to"], body["group_by"]) == ("2026-03-01", "2026-03-31", "day")
    totals = body["totals"]
    assert (totals["requests"], totals["ok"], totals["escalated"], totals["rejected"]) == (5, 3, 1, 1)
    assert Decimal(totals["cost"]) == Decimal("0.254")
    assert totals["mean_latency_ms"] == pytest.approx((10 + 30 + 20 + 400 + 2) / 5, abs=0.01)
    assert totals["units"] == {"characters": {"in": 50.0, "out": 5.0}, "tokens": {"in": 100.0, "out": 50.0}}
    assert totals["local"]["requests"] == 4 and Decimal(totals["local"]["cost"]) == Decimal("0.004")
    assert totals["premium"]["requests"] == 1 and Decimal(totals["premium"]["cost"]) == Decimal("0.25")
    assert [(row["day"], row["requests"], Decimal(row["cost"])) for row in body["rows"]] == [
        ("2026-03-01", 2, Decimal("0.003")), ("2026-03-02", 3, Decimal("0.251")),
    ]
    assert body["rows"][0]["mean_latency_ms"] == 20.0


def test_usage_by_model_and_by_task_puts_the_most_expensive_first(api, alice, march):
    range_ = {"from": "2026-03-01", "to": "2026-03-31"}
    by_model = usage(api, alice, group_by="model", **range_).json()["rows"]
    assert [(row["model"], row["requests"], row["cost"]) for row in by_model] == [
        ("gpt-fake", 1, "0.250000000000"), ("lid-176", 4, "0.004000000000"),
    ]
    assert by_model[0]["premium"] == {"requests": 1, "cost": "0.250000000000"} and by_model[0]["local"]["requests"] == 0
    by_task = usage(api, alice, group_by="task", **range_).json()["rows"]
    assert [(row["task"], row["requests"]) for row in by_task] == [("generation", 1), ("language_id", 3), ("classification", 1)]


def test_usage_defaults_to_the_current_month(api, alice, march):
    with time_machine.travel(at(date(2026, 3, 20)), tick=False):
        body = usage(api, alice).json()
    assert (body["from"], body["to"]) == ("2026-03-01", "2026-03-20")
    assert body["totals"]["requests"] == 5  # neither February nor April
    with time_machine.travel(at(date(2026, 4, 3)), tick=False):
        assert usage(api, alice).json()["totals"]["cost"] == "7.000000000000"


def test_usage_over_an_empty_range_is_zero_not_missing(api, alice, march):
    body = usage(api, alice, **{"from": "2025-01-01", "to": "2025-01-31"}).json()
    assert body["rows"] == []
    assert (body["totals"]["requests"], body["totals"]["cost"], body["totals"]["mean_latency_ms"]) == (0, "0.000000000000", None)


@pytest.mark.parametrize("params, field", [
    ({"from": "2026-13-01"}, "from"),
    ({"to": "March 3rd"}, "to"),
    ({"from": "2026-03-10", "to": "2026-03-01"}, "from"),
    ({"from": "2025-01-01", "to": "2026-03-01"}, "to"),
    ({"group_by": "tenant"}, "group_by"),
    # Strict: empty parameters are not their default, and a date has one spelling.
    ({"from": ""}, "from"),
    ({"to": ""}, "to"),
    ({"group_by": ""}, "group_by"),
    ({"from": "2026-1-1"}, "from"),
    ({"to": "2026-03-1"}, "to"),
    ({"from": "20260301"}, "from"),
    ({"from": "2026-02-30"}, "from"),
    ({"from": "٢٠٢٦-٠٣-٠١"}, "from"),  # Arabic-Indic digits: \d outside ASCII
    ({"to": "2026-03-01\x00"}, "to"),
])
def test_bad_parameters_are_a_400_naming_the_field(api, alice, params, field):
    response = usage(api, alice, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(f"{field}:") and error["request_id"]


def test_a_year_is_the_longest_range(api, alice):
    assert usage(api, alice, **{"from": "2024-01-01", "to": "2024-12-31"}).status_code == 200  # 366 days
    assert usage(api, alice, **{"from": "2025-01-01", "to": "2026-01-02"}).status_code == 400


def test_a_tenant_sees_only_its_own_usage(api, alice, bob, march):
    range_ = {"from": "2026-03-01", "to": "2026-03-31", "group_by": "model"}
    mine = usage(api, bob, **range_).json()
    assert [(row["model"], row["requests"], row["cost"]) for row in mine["rows"]] == [("gpt-fake", 1, "3.500000000000")]
    assert mine["totals"]["local"]["requests"] == 0
    theirs = usage(api, alice, **range_).json()
    assert Decimal(theirs["totals"]["cost"]) == Decimal("0.254")  # none of bob's 3.5


def test_a_report_costs_one_query_after_authentication(api, alice, march, django_assert_num_queries):
    usage(api, alice)  # the key's first use is written once a minute
    with django_assert_num_queries(2):  # the key with its tenant, then the report itself
        assert usage(api, alice, **{"from": "2026-03-01", "to": "2026-03-31"}).json()["totals"]["requests"] == 5


def test_usage_needs_the_usage_scope(api, alice_limited):
    assert api.get("/v1/usage").status_code == 401
    response = usage(api, alice_limited)
    assert response.status_code == 403 and response.json()["error"]["code"] == "missing_scope"


@pytest.mark.django_db
def test_usage_is_described_in_the_schema(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"]["/v1/usage"]["get"]
    assert {parameter["name"] for parameter in operation["parameters"]} == {"from", "to", "group_by"}
    assert "200" in operation["responses"]


def test_shadow_evaluation_is_reported_apart_and_not_in_what_the_budget_paid(api, alice, march):
    teacher = record(alice, at(date(2026, 3, 2), hour=13), spec=provider_model("teacher-fake"), unit="tokens",
                     units_in=30, units_out=5, cost="0.02")
    InferenceRecord.objects.filter(pk=teacher.pk).update(purpose="evaluation")
    rollup(date(2026, 3, 2), date(2026, 3, 2))
    assert UsageDaily.objects.get(model_slug="teacher-fake").purpose == "evaluation"
    totals = usage(api, alice, **{"from": "2026-03-01", "to": "2026-03-31"}).json()["totals"]
    assert (totals["requests"], Decimal(totals["cost"])) == (5, Decimal("0.254"))  # as without the evaluation
    assert totals["evaluation"] == {"requests": 1, "cost": "0.020000000000"}
