"""Daily usage: inference records rolled up into UsageDaily rows, and the reports tenants and operators read from them.

The rollup reads routing's records (reporting only: the request path depends on billing, never the reverse).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.postgres.aggregates import BoolOr
from django.db import connection, transaction
from django.db.models import BooleanField, Count, ExpressionWrapper, FloatField, Max, Min, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import UsageDaily
from registry.models import ModelSpec
from routing.models import InferenceRecord
from tenants.models import Tenant

KEY_FIELDS = ["tenant", "day", "model_slug", "task", "unit", "purpose"]
VALUE_FIELDS = ["tier", "is_local", "requests", "ok", "errors", "rejected", "escalated", "cached",
                "units_in", "units_out", "cost", "latency_ms_sum", "compute_ms_sum", "updated_at"]
COUNTERS = ["requests", "ok", "errors", "rejected", "escalated", "cached"]
GROUP_FIELDS = {"day": "day", "model": "model_slug", "task": "task"}
MAX_RANGE_DAYS = 366
# pg_advisory_xact_lock(namespace, day): one rollup of a given day at a time.
LOCK_NAMESPACE = 0x75736167

Status = InferenceRecord.Status
LOCAL_SOURCES = [kind for kind in ModelSpec.SourceKind.values if kind != ModelSpec.SourceKind.PROVIDER]


def today() -> date:
    return timezone.now().astimezone(UTC).date()


def rollup(day_from: date | None = None, day_to: date | None = None) -> int:
    """Recompute UsageDaily for every UTC day from `day_from` through `day_to` (inclusive); return the rows written.

    By default it starts the day before the latest rolled-up day (the first record's day when nothing is rolled up
    yet) and ends today, so a run after downtime catches up by itself with no state but the rows. Each day is
    recomputed whole in one transaction (upsert, then delete the rows no longer produced): running it twice
    leaves the same rows. Days outside the range are never touched, so pruning old records keeps their usage.

    Pending records are left out: their cost, units and latency are not known yet. Nothing is lost: a record
    stays pending for at most the request timeout before it completes or the reaper closes it as abandoned,
    and every run recomputes yesterday and today. Abandoned records count as errors.
    """
    current = today()
    if day_from is None:
        latest = UsageDaily.objects.aggregate(day=Max("day"))["day"]
        if latest is not None:
            day_from = min(latest, current) - timedelta(days=1)
        else:
            first = InferenceRecord.objects.aggregate(at=Min("created_at"))["at"]
            if first is None:
                return 0
            day_from = first.astimezone(UTC).date()
    day_to = day_to or current
    written = 0
    day = day_from
    while day <= day_to:
        written += rollup_day(day)
        day += timedelta(days=1)
    return written


@transaction.atomic
def rollup_day(day: date) -> int:
    """Recompute one UTC day's rows from its records; return how many rows the day has now."""
    with connection.cursor() as cursor:
        # Two overlapping runs (a slow one and the next schedule) would otherwise interleave their
        # upserts and deletes on the same rows and may deadlock; the second one waits, then redoes the day.
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_NAMESPACE, day.toordinal()])
    start = datetime.combine(day, time.min, tzinfo=UTC)
    records = InferenceRecord.objects.filter(created_at__gte=start, created_at__lt=start + timedelta(days=1))
    local = Q(model__source_kind__in=LOCAL_SOURCES) | Q(model__isnull=True, tier=ModelSpec.Tier.LOCAL)
    groups = (
        records.exclude(status=Status.PENDING)
        .order_by()
        .values("tenant_id", "model_slug", "task", "unit", "purpose")
        .annotate(
            last_tier=Max("tier"),
            # A deleted model leaves its records without a spec: their tier still tells.
            is_local=BoolOr(ExpressionWrapper(local, output_field=BooleanField())),
            requests=Count("pk"),
            ok=Count("pk", filter=Q(status=Status.OK)),
            errors=Count("pk", filter=Q(status__in=[Status.ERROR, Status.ABANDONED])),
            rejected=Count("pk", filter=Q(status=Status.REJECTED)),
            escalated=Count("pk", filter=Q(status=Status.ESCALATED)),
            cached=Count("pk", filter=Q(cached=True)),
            units_in=Sum("units_in"),
            units_out=Sum("units_out"),
            cost=Sum("cost"),
            latency_ms_sum=Coalesce(Sum("latency_ms"), Value(0.0), output_field=FloatField()),
            compute_ms_sum=Coalesce(Sum("compute_ms"), Value(0.0), output_field=FloatField()),
        )
        .order_by("tenant_id", "model_slug", "task", "unit", "purpose")
    )
    rows = [UsageDaily(day=day, tier=group.pop("last_tier") or "", **group) for group in groups]
    if rows:
        UsageDaily.objects.bulk_create(rows, update_conflicts=True, unique_fields=KEY_FIELDS, update_fields=VALUE_FIELDS)
    UsageDaily.objects.filter(day=day).exclude(pk__in=[row.pk for row in rows]).delete()
    return len(rows)


# --- reports ----------------------------------------------------------------------------------------
def usage_rows(*, day_from: date, day_to: date, tenant: Tenant | None = None) -> QuerySet[UsageDaily]:
    rows = UsageDaily.objects.filter(day__gte=day_from, day__lte=day_to)
    return rows.filter(tenant=tenant) if tenant is not None else rows


def _sums() -> dict[str, Any]:
    return {
        **{name: Sum(name) for name in COUNTERS},
        "units_in": Sum("units_in"), "units_out": Sum("units_out"), "cost": Sum("cost"), "latency_ms_sum": Sum("latency_ms_sum"),
    }


def _empty() -> dict[str, Any]:
    return {
        **{name: 0 for name in COUNTERS}, "units": {}, "cost": Decimal("0"), "latency_ms_sum": 0.0,
        "local": {"requests": 0, "cost": Decimal("0")}, "premium": {"requests": 0, "cost": Decimal("0")},
        "evaluation": {"requests": 0, "cost": Decimal("0")},
    }


def _add(into: dict[str, Any], part: dict[str, Any]) -> None:
    if part["purpose"] == "evaluation":
        # Shadow evaluation is paid from the evaluation allowance: shown apart, never in what the budget paid.
        into["evaluation"]["requests"] += part["requests"]
        into["evaluation"]["cost"] += part["cost"]
        return
    for name in COUNTERS:
        into[name] += part[name]
    into["cost"] += part["cost"]
    into["latency_ms_sum"] += part["latency_ms_sum"]
    units = into["units"].setdefault(part["unit"] or "items", {"in": 0.0, "out": 0.0})
    units["in"] += part["units_in"]
    units["out"] += part["units_out"]
    side = into["local" if part["is_local"] else "premium"]
    side["requests"] += part["requests"]
    side["cost"] += part["cost"]


def money(value: Decimal) -> str:
    """Costs travel as decimal strings with every stored digit: floats would round them."""
    return f"{value.quantize(Decimal('1e-12')):f}"


def _public(sums: dict[str, Any]) -> dict[str, Any]:
    requests = sums["requests"]
    return {
        **{name: sums[name] for name in COUNTERS},
        "units": {unit: {"in": round(u["in"], 3), "out": round(u["out"], 3)} for unit, u in sorted(sums["units"].items())},
        "cost": money(sums["cost"]),
        "mean_latency_ms": round(sums["latency_ms_sum"] / requests, 2) if requests else None,
        "local": {"requests": sums["local"]["requests"], "cost": money(sums["local"]["cost"])},
        "premium": {"requests": sums["premium"]["requests"], "cost": money(sums["premium"]["cost"])},
        "evaluation": {"requests": sums["evaluation"]["requests"], "cost": money(sums["evaluation"]["cost"])},
    }


def usage_report(*, tenant: Tenant, day_from: date, day_to: date, group_by: str) -> dict[str, Any]:
    """Totals and one row per day, model or task of `tenant`'s usage over [day_from, day_to].

    Units stay apart by kind (tokens, characters, seconds, items): adding tokens to characters means nothing.
    "premium" is every provider API, whatever its tier.
    """
    field = GROUP_FIELDS[group_by]
    parts = (
        usage_rows(day_from=day_from, day_to=day_to, tenant=tenant)
        .order_by().values(field, "unit", "is_local", "purpose").annotate(**_sums())
    )
    totals, groups = _empty(), defaultdict(_empty)
    for part in parts:
        _add(totals, part)
        _add(groups[part[field]], part)
    if group_by == "day":
        keys = sorted(groups)
    else:  # the most expensive first
        keys = sorted(groups, key=lambda key: (-groups[key]["cost"], -groups[key]["requests"], key))
    rows = [{group_by: key.isoformat() if isinstance(key, date) else key, **_public(groups[key])} for key in keys]
    return {"from": day_from.isoformat(), "to": day_to.isoformat(), "group_by": group_by, "totals": _public(totals), "rows": rows}


def daily_series(*, day_from: date, day_to: date, tenant: Tenant | None = None) -> list[dict[str, Any]]:
    """Requests and cost for every day of the range, days without usage included (a gap should show)."""
    found = {
        row["day"]: row
        for row in usage_rows(day_from=day_from, day_to=day_to, tenant=tenant)
        .order_by().values("day")
        .annotate(local_requests=Sum("requests", filter=Q(is_local=True)), local_cost=Sum("cost", filter=Q(is_local=True)),
                  requests=Sum("requests"), cost=Sum("cost"))
    }
    series = []
    for offset in range((day_to - day_from).days + 1):
        day = day_from + timedelta(days=offset)
        row = found.get(day, {})
        series.append({
            "day": day,
            "requests": row.get("requests") or 0,
            "cost": row.get("cost") or Decimal("0"),
            "local_requests": row.get("local_requests") or 0,
            "local_cost": row.get("local_cost") or Decimal("0"),
        })
    return series


def top_models(*, day_from: date, day_to: date, tenant: Tenant | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Models by cost over the range, the most expensive first."""
    return list(
        usage_rows(day_from=day_from, day_to=day_to, tenant=tenant)
        .order_by().values("model_slug")
        .annotate(tier=Max("tier"), requests=Sum("requests"), cost=Sum("cost"), latency_ms_sum=Sum("latency_ms_sum"),
                  tenants=Count("tenant", distinct=True))
        .order_by("-cost", "-requests", "model_slug")[:limit]
    )
