"""What the operator dashboard and the inference review show: traffic, cost, latency, budgets, routing
decisions and the model pool over a range of days, read so that a page costs a fixed handful of queries
whatever the number of records (day figures from the usage rollups, everything else index-bounded)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.db.models import Aggregate, Count, DecimalField, FloatField, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from billing.models import Alert, Budget, UsageDaily
from registry.models import ModelSpec
from routing.models import InferenceRecord, QualitySignal, RoutingPolicy, ThresholdChange
from tenants.models import Tenant

logger = logging.getLogger("modelgate.routing")

HOURLY_MAX_DAYS = 2  # up to two days the series is hourly (read from the records), beyond daily (the rollups)
MAX_ROWS = 50  # models, budgets, policies and alerts listed at most: the page is a summary, the changelists go further
MAX_THRESHOLD_CHANGES = 500
MAX_TRACE_ATTEMPTS = 50

Status = InferenceRecord.Status
LOCAL_SOURCES = [kind for kind in ModelSpec.SourceKind.values if kind != ModelSpec.SourceKind.PROVIDER]
# As the daily rollup decides it: a deleted model leaves its records without a spec, their tier still tells.
IS_LOCAL = Q(model__source_kind__in=LOCAL_SOURCES) | Q(model__isnull=True, tier=ModelSpec.Tier.LOCAL)
MONEY_FIELD = DecimalField(max_digits=30, decimal_places=12)


class PercentileCont(Aggregate):
    """PostgreSQL's exact percentile of a column over the rows of a group."""

    function = "PERCENTILE_CONT"
    name = "PercentileCont"
    output_field = FloatField()
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"A percentile is a fraction between 0 and 1, got {fraction}.")
        super().__init__(expression, fraction=f"{float(fraction)!r}", **extra)


@dataclass(frozen=True)
class Span:
    """UTC days [start, end], both included, of one tenant or of all."""

    start: date
    end: date
    tenant: Tenant | None = None

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def until(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def hourly(self) -> bool:
        return self.days <= HOURLY_MAX_DAYS

    def records(self) -> QuerySet[InferenceRecord]:
        """Tenants' answers in the span, completed: an index range (created_at, or tenant then created_at)."""
        rows = InferenceRecord.objects.filter(created_at__gte=self.since, created_at__lt=self.until,
                                              purpose=InferenceRecord.Purpose.ANSWER).exclude(status=Status.PENDING)
        return rows.filter(tenant=self.tenant) if self.tenant is not None else rows

    def usage(self) -> QuerySet[UsageDaily]:
        rows = UsageDaily.objects.filter(day__gte=self.start, day__lte=self.end, purpose=InferenceRecord.Purpose.ANSWER)
        return rows.filter(tenant=self.tenant) if self.tenant is not None else rows


def rate(part: float | int | Decimal, whole: float | int | Decimal) -> float | None:
    return float(part) / float(whole) if whole else None


# --- traffic and cost --------------------------------------------------------------------------------
def totals(span: Span) -> dict[str, Any]:
    """Requests, cost, local share and the error, escalation and cache rates of the span (the rollups)."""
    found = span.usage().aggregate(
        all_requests=Coalesce(Sum("requests"), 0), errors_=Coalesce(Sum("errors"), 0),
        escalated_=Coalesce(Sum("escalated"), 0), cached_=Coalesce(Sum("cached"), 0),
        local_requests=Coalesce(Sum("requests", filter=Q(is_local=True)), 0),
        all_cost=Coalesce(Sum("cost"), Value(Decimal("0")), output_field=MONEY_FIELD),
        local_cost=Coalesce(Sum("cost", filter=Q(is_local=True)), Value(Decimal("0")), output_field=MONEY_FIELD),
    )
    # Aliases apart from the column names: an aggregate named like a column would shadow it in the next one.
    found = {"requests": found["all_requests"], "errors": found["errors_"], "escalated": found["escalated_"],
             "cached": found["cached_"], "local_requests": found["local_requests"], "cost": found["all_cost"],
             "local_cost": found["local_cost"]}
    requests = found["requests"]
    return {
        **found,
        "premium_requests": requests - found["local_requests"],
        "premium_cost": found["cost"] - found["local_cost"],
        "local_share": rate(found["local_requests"], requests),
        "error_rate": rate(found["errors"], requests),
        "escalation_rate": rate(found["escalated"], requests),
        "cache_rate": rate(found["cached"], requests),
    }


def series(span: Span) -> list[dict[str, Any]]:
    """Requests and cost per hour (short spans, from the records) or per day (from the rollups), local and
    premium apart, every bucket of the span present (a gap should show)."""
    if span.hourly:
        rows = span.records().annotate(bucket=TruncHour("created_at", tzinfo=UTC)).order_by().values("bucket").annotate(
            all_requests=Count("pk"), all_cost=Sum("cost"), local_requests=Count("pk", filter=IS_LOCAL),
            local_cost=Sum("cost", filter=IS_LOCAL),
        )
        found = {row["bucket"]: {**row, "requests": row["all_requests"], "cost": row["all_cost"]} for row in rows}
        buckets: list[Any] = [span.since + timedelta(hours=h) for h in range(span.days * 24)]
    else:
        rows = span.usage().order_by().values("day").annotate(
            all_requests=Sum("requests"), all_cost=Sum("cost"), local_requests=Sum("requests", filter=Q(is_local=True)),
            local_cost=Sum("cost", filter=Q(is_local=True)),
        )
        found = {row["day"]: {**row, "requests": row["all_requests"], "cost": row["all_cost"]} for row in rows}
        buckets = [span.start + timedelta(days=d) for d in range(span.days)]
    out = []
    for bucket in buckets:
        row = found.get(bucket, {})
        local_requests, requests = row.get("local_requests") or 0, row.get("requests") or 0
        local_cost, cost = row.get("local_cost") or Decimal("0"), row.get("cost") or Decimal("0")
        out.append({
            "bucket": bucket, "label": f"{bucket:%m-%d %H:00}" if span.hourly else f"{bucket:%Y-%m-%d}",
            "local_requests": local_requests, "premium_requests": requests - local_requests,
            "local_cost": local_cost, "premium_cost": cost - local_cost,
        })
    return out


def latency_by_model(span: Span) -> list[dict[str, Any]]:
    """Median and 95th percentile of the end-to-end latency of each model's answers in the span (PostgreSQL's
    percentile_cont over the span's index range), the busiest models first."""
    return list(
        span.records().filter(latency_ms__isnull=False, cached=False).order_by().values("model_slug")
        .annotate(requests=Count("pk"), p50=PercentileCont("latency_ms", 0.5), p95=PercentileCont("latency_ms", 0.95),
                  errors=Count("pk", filter=Q(status__in=[Status.ERROR, Status.ABANDONED])))
        .order_by("-requests", "model_slug")[:MAX_ROWS]
    )


# --- budgets ---------------------------------------------------------------------------------------
def budgets(span: Span, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each tenant's budget this period: spent, held by requests in flight, limit, and where spending at
    the pace so far would end the period."""
    now = now or timezone.now()
    rows = Budget.objects.select_related("tenant").order_by("-spent", "tenant__slug")
    if span.tenant is not None:
        rows = rows.filter(tenant=span.tenant)
    out = []
    for budget in rows[:MAX_ROWS]:
        projected = projected_spend(budget, now=now)
        out.append({
            "budget": budget, "tenant": budget.tenant, "spent": budget.spent, "held": budget.reserved, "limit": budget.limit,
            "used_share": rate(budget.spent + budget.reserved, budget.limit) if budget.limit else 1.0,
            "projected": projected, "projected_share": rate(projected, budget.limit) if budget.limit else None,
            "period_end": budget.period_end,
        })
    return out


def projected_spend(budget: Budget, *, now: datetime) -> Decimal:
    """Spent so far, scaled to the whole period at the pace since it began (the first hour counts as an hour,
    so a period just begun does not project a spike to infinity)."""
    period = (budget.period_end - budget.period_start).total_seconds()
    elapsed = (min(now, budget.period_end) - budget.period_start).total_seconds()
    if period <= 0 or elapsed >= period:
        return budget.spent
    elapsed = max(elapsed, min(3600.0, period))
    return (budget.spent * Decimal(period) / Decimal(elapsed)).quantize(Decimal("1e-12"))


# --- routing decisions -----------------------------------------------------------------------------
def policies(span: Span) -> list[RoutingPolicy]:
    """The policies that route the span's tenant (its own and the global ones), or every policy."""
    rows = RoutingPolicy.objects.select_related("tenant", "learned_router").order_by("task", "tenant__slug")
    if span.tenant is not None:
        rows = rows.filter(Q(tenant=span.tenant) | Q(tenant__isnull=True))
    return list(rows[:MAX_ROWS])


def latest_curves(policy_list: list[RoutingPolicy]) -> dict[int, dict[str, Any]]:
    """Each policy's routing curve as its latest tuner decision measured it (the evidence keeps the
    curve), so the page draws every policy's curve without re-reading its labelled records."""
    changes = (
        ThresholdChange.objects.filter(policy__in=policy_list, evidence__has_key="curve")
        .order_by("policy_id", "-created_at").distinct("policy_id")
    )
    out = {}
    for change in changes:
        evidence = change.evidence
        points = [_point(p) for p in evidence.get("curve") or [] if p.get("premium_share") is not None and p.get("pgr") is not None]
        if not points:
            continue
        current = evidence.get("current")
        out[change.policy_id] = {
            "change": change, "points": points, "apgr": evidence.get("apgr"), "samples": evidence.get("samples"),
            "current": _point(current) if current and current.get("pgr") is not None else None,
        }
    return out


def _point(point: dict[str, Any]) -> SimpleNamespace:
    quality = point.get("quality")
    return SimpleNamespace(floor=point.get("floor"), premium_share=point["premium_share"], pgr=point["pgr"],
                           quality=point["pgr"] if quality is None else quality)


def threshold_changes(span: Span, policy_list: list[RoutingPolicy]) -> list[ThresholdChange]:
    """The floor decisions of these policies within the span, oldest first (the timeline)."""
    return list(
        ThresholdChange.objects.filter(policy__in=policy_list, created_at__gte=span.since, created_at__lt=span.until)
        .select_related("policy__tenant").defer("evidence").order_by("created_at")[:MAX_THRESHOLD_CHANGES]
    )


def drift_alerts(span: Span) -> list[Alert]:
    rows = Alert.objects.filter(kind=Alert.Kind.DRIFT, created_at__gte=span.since, created_at__lt=span.until)
    if span.tenant is not None:
        rows = rows.filter(tenant=span.tenant)
    return list(rows.select_related("tenant").order_by("-created_at")[:MAX_ROWS])


# --- the model pool --------------------------------------------------------------------------------
def pool_state() -> dict[str, Any]:
    """What the model servers (or this process's own pool) hold now: per server its models and memory,
    per model its memory, batches, batch sizes, queue and compute times. A server that does not answer is
    reported as such; the page still renders."""
    from inference.errors import InferenceError
    from registry import services

    pool = services.get_pool()
    try:
        stats = pool.stats()
        servers = pool.servers_state() if hasattr(pool, "servers_state") else {
            "this process": {"ok": True, "loaded": pool.loaded(), "used_memory_mb": pool.used_memory_mb()}
        }
    except (InferenceError, OSError) as exc:
        logger.warning("model pool state unavailable", extra={"error": str(exc)})
        return {"error": str(exc), "servers": {}, "models": []}
    models = [{"slug": slug, **values} for slug, values in sorted(stats.items())]
    return {"error": "", "servers": servers, "models": models}


# --- one request's attempts ------------------------------------------------------------------------
def request_trace(record: InferenceRecord) -> dict[str, Any]:
    """Every attempt of the record's request (same tenant and request id) in order, with the quality signals
    each one got: what the review page lays out as one trace."""
    attempts = list(
        InferenceRecord.objects.filter(tenant_id=record.tenant_id, request_id=record.request_id)
        .select_related("model", "policy", "api_key").defer("input_text")
        .order_by("created_at", "id")[:MAX_TRACE_ATTEMPTS]
    )
    if not any(attempt.pk == record.pk for attempt in attempts):
        attempts.append(record)
    signals: dict[Any, list[QualitySignal]] = {}
    for signal in QualitySignal.objects.filter(record__in=attempts).order_by("created_at"):
        signals.setdefault(signal.record_id, []).append(signal)
    answers = [a for a in attempts if a.purpose == InferenceRecord.Purpose.ANSWER]
    return {
        "attempts": [{"record": attempt, "signals": signals.get(attempt.pk, [])} for attempt in attempts],
        "reserved": sum((a.reserved_cost for a in answers), Decimal("0")),
        "charged": sum((a.cost for a in answers), Decimal("0")),
        "evaluation_cost": sum((a.cost for a in attempts if a.purpose != InferenceRecord.Purpose.ANSWER), Decimal("0")),
        "latency_ms": sum(a.latency_ms or 0 for a in answers),
    }


# --- numbers for people ----------------------------------------------------------------------------
def format_ms(value: float | None) -> str:
    """Milliseconds with the precision that matters at their size."""
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value / 1000:,.2f} s"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def format_money(value: Decimal | float | None) -> str:
    """Currency: cents for amounts of a cent or more, two significant digits below (a request costs $0.000042)."""
    if value is None:
        return "–"
    symbol = settings.MODELGATE_CURRENCY_SYMBOL
    value = Decimal(value)
    sign, value = ("-", -value) if value < 0 else ("", value)
    if value == 0:
        return f"{symbol}0.00"
    if value >= Decimal("0.01"):
        return f"{sign}{symbol}{value:,.2f}"
    digits = min(12, -value.adjusted() + 1)
    return f"{sign}{symbol}{value:.{digits}f}"


def format_share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"
