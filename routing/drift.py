"""Drift: once a day each policy's last day is compared with the week before it — the distribution of
routing scores (PSI), agreement with premium, and latency and error rate per model. A drift raises an
alert (the tenant's alert channels), flags the policy in the admin, and makes the tuner's next run
look at recent records only and fit its learned router afresh."""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, Q
from django.utils import timezone

from routing import curves
from routing.models import InferenceRecord, QualitySignal, RoutingPolicy

logger = logging.getLogger("modelgate.routing")

RECENT = timedelta(days=1)
REFERENCE = timedelta(days=7)
MIN_SCORES = 50  # fewer scores on either side say nothing about their distribution
MIN_SIGNALS = 20
AGREEMENT_DROP = 0.1  # mean agreement with premium falling by this much is a drift
ERROR_RISE = 0.05  # an error rate rising by 5 points
LATENCY_RISE = 1.5  # a p50 latency growing half again


@dataclass
class DriftReport:
    policy: RoutingPolicy
    psi: float | None = None
    agreement: tuple[float | None, float | None] = (None, None)  # reference, recent
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.findings)

    def message(self) -> str:
        if not self.findings:
            return "stable"
        return "; ".join(self.findings)


def check(policy: RoutingPolicy, *, now: datetime | None = None) -> DriftReport:
    """Compare the policy's last day with the week before it, and flag or clear the policy."""
    now = now or timezone.now()
    recent_start, reference_start = now - RECENT, now - RECENT - REFERENCE
    answers = InferenceRecord.objects.filter(policy=policy, purpose=InferenceRecord.Purpose.ANSWER)
    recent = answers.filter(created_at__gte=recent_start, created_at__lt=now)
    reference = answers.filter(created_at__gte=reference_start, created_at__lt=recent_start)
    report = DriftReport(policy=policy)

    scores_now = list(recent.filter(score__isnull=False).values_list("score", flat=True)[:100_000])
    scores_ref = list(reference.filter(score__isnull=False).values_list("score", flat=True)[:100_000])
    if len(scores_now) >= MIN_SCORES and len(scores_ref) >= MIN_SCORES:
        report.psi = curves.psi(scores_ref, scores_now)
        if report.psi > curves.PSI_SHIFTED:
            report.findings.append(f"routing scores shifted (PSI {report.psi:.2f} > {curves.PSI_SHIFTED})")

    def agreement(records: Any) -> float | None:
        shadow = QualitySignal.objects.filter(record__in=records, source=QualitySignal.Source.SHADOW)
        found = shadow.aggregate(mean=Avg("agreement"), n=Count("pk"))
        return found["mean"] if found["n"] >= MIN_SIGNALS else None

    report.agreement = (agreement(reference), agreement(recent))
    before, after = report.agreement
    # Rounded: 0.90 − 0.80 is 0.0999… in floating point, and a drop of a tenth is a drift.
    if before is not None and after is not None and round(before - after, 9) >= AGREEMENT_DROP:
        report.findings.append(f"agreement with premium fell from {before:.2f} to {after:.2f}")

    for slug in sorted(set(recent.values_list("model_slug", flat=True).distinct())):
        stats = {"reference": _model_stats(reference.filter(model_slug=slug)), "recent": _model_stats(recent.filter(model_slug=slug))}
        report.models[slug] = stats
        old, new = stats["reference"], stats["recent"]
        if old["n"] >= MIN_SCORES and new["n"] >= MIN_SCORES:
            if new["error_rate"] - old["error_rate"] >= ERROR_RISE:
                report.findings.append(f"{slug}: error rate {old['error_rate']:.1%} → {new['error_rate']:.1%}")
            if old["p50_ms"] and new["p50_ms"] and new["p50_ms"] >= LATENCY_RISE * old["p50_ms"]:
                report.findings.append(f"{slug}: p50 latency {old['p50_ms']:.0f} → {new['p50_ms']:.0f} ms")

    _flag(policy, report, now=now)
    return report


def check_all(*, now: datetime | None = None) -> list[DriftReport]:
    reports = []
    for policy in RoutingPolicy.objects.select_related("tenant").order_by("pk"):
        try:
            reports.append(check(policy, now=now))
        except Exception:
            logger.exception("drift check failed", extra={"policy": policy.pk})
    return reports


def _model_stats(records: Any) -> dict[str, Any]:
    done = records.exclude(status=InferenceRecord.Status.PENDING)
    counts = done.aggregate(n=Count("pk"), errors=Count("pk", filter=Q(status__in=[InferenceRecord.Status.ERROR,
                                                                                  InferenceRecord.Status.ABANDONED])))
    latencies = list(done.filter(latency_ms__isnull=False).values_list("latency_ms", flat=True)[:20_000])
    n = counts["n"]
    return {"n": n, "error_rate": counts["errors"] / n if n else 0.0,
            "p50_ms": statistics.median(latencies) if latencies else None}


def _flag(policy: RoutingPolicy, report: DriftReport, *, now: datetime) -> None:
    from billing.alerts import raise_drift

    if report.drifted:
        RoutingPolicy.objects.filter(pk=policy.pk).update(drift_flagged_at=now, drift_detail=report.message())
        policy.drift_flagged_at, policy.drift_detail = now, report.message()
        if policy.tenant_id is not None:
            raise_drift(tenant_id=policy.tenant_id, subject=str(policy), message=report.message(),
                        day=now.replace(hour=0, minute=0, second=0, microsecond=0))
        else:
            logger.warning("routing drift", extra={"policy": str(policy), "detail": report.message()})
    elif policy.drift_flagged_at is not None:
        RoutingPolicy.objects.filter(pk=policy.pk).update(drift_flagged_at=None, drift_detail="")
        policy.drift_flagged_at, policy.drift_detail = None, ""
