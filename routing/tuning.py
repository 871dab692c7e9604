"""Self-tuning: the labelled records of a window become a routing curve (routing.curves), the curve
and the tenant's remaining budget choose the floor, and every decision is written down with its
evidence (ThresholdChange) — also when it keeps the value. Operators lock, set and roll back."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from billing.models import Budget
from billing.services import budget_status
from routing import curves
from routing.models import InferenceRecord, LearnedRouter, QualitySignal, RoutingPolicy, ThresholdChange
from routing.router import learned_weights

logger = logging.getLogger("modelgate.routing")

Source = QualitySignal.Source
# Which label a record takes when it has several: people over the teacher, the teacher's shadow
# answer over the escalation pair (both compare with premium; the shadow one was sampled at random).
LABEL_PRECEDENCE = (Source.OPERATOR, Source.FEEDBACK, Source.SHADOW, Source.ESCALATION)
CURVE_POINTS_KEPT = 41  # evidence keeps a readable curve, not one point per record
CPT_LEVELS = (0.5, 0.8, 0.95)


@dataclass
class Window:
    """The labelled records of one policy over a span of time, as the curve sees them."""

    policy: RoutingPolicy
    since: datetime
    until: datetime
    items: list[curves.Labelled]
    by_source: dict[str, int]
    records: int  # locally answered records in the window, labelled or not
    unused: int  # labelled only by people, outside the random sample: reported, not counted (they would bias it)

    @property
    def days(self) -> float:
        return max((self.until - self.since).total_seconds() / 86400, 1e-6)


@dataclass
class Evaluation:
    window: Window
    points: list[curves.CurvePoint]
    apgr: float | None
    cpt: dict[float, float | None] = field(default_factory=dict)
    current: curves.CurvePoint | None = None

    def evidence(self) -> dict[str, Any]:
        return {
            "window": {"since": self.window.since.isoformat(), "until": self.window.until.isoformat()},
            "samples": len(self.window.items),
            "records": self.window.records,
            "by_source": self.window.by_source,
            "people_only_unused": self.window.unused,
            "apgr": _rounded(self.apgr),
            "cpt": {f"{level:.0%}": _rounded(share) for level, share in self.cpt.items()},
            "current": _point(self.current) if self.current else None,
            "curve": [_point(point) for point in _thinned(self.points)],
        }


@dataclass(frozen=True)
class Example:
    """One labelled local answer, with what each router would have scored it."""

    record_id: Any
    confidence: float | None
    features: dict[str, Any] | None  # of the record's weakest item: the one its routing turned on
    agreement: float
    weight: float
    local_cost: Decimal
    premium_cost: Decimal


def labelled_examples(policy: RoutingPolicy, *, since: datetime, until: datetime) -> tuple[list[Example], dict[str, int], int, int]:
    """The policy's local answers between `since` and `until` with a quality label, weighted so that they
    stand for all local answers: a shadow sample counts 1/shadow_rate answers (it was drawn at that rate
    from the answers that stayed local), an escalation pair counts itself (every escalated answer has
    one). Labels from people refine a record already in that sample; records only people rated are left
    out, since people choose what they rate. Returns (examples, labels by source, local answers, left out)."""
    local = InferenceRecord.objects.filter(
        policy=policy, purpose=InferenceRecord.Purpose.ANSWER, tier="local", confidence__isnull=False,
        created_at__gte=since, created_at__lt=until,
        status__in=[InferenceRecord.Status.OK, InferenceRecord.Status.ESCALATED],
    )
    # In the records' order: a held-out split by position must not depend on how the rows came back.
    rows = (QualitySignal.objects.filter(record__in=local).order_by("record__created_at", "record_id", "source")
            .values_list("record_id", "source", "agreement", "teacher__cost", "record__confidence", "record__features",
                         "record__cost"))
    labels: dict[Any, dict[str, tuple]] = {}
    for record_id, source, agreement, teacher_cost, confidence, features, cost in rows:
        labels.setdefault(record_id, {})[source] = (agreement, teacher_cost, confidence, features, cost)
    rate = policy.shadow_rate if policy.shadow_rate > 0 else 1.0
    teacher_costs = [entry[1] for sources in labels.values() for entry in sources.values() if entry[1] is not None]
    mean_teacher = sum(teacher_costs, Decimal("0")) / len(teacher_costs) if teacher_costs else Decimal("0")
    examples: list[Example] = []
    by_source: dict[str, int] = {}
    left_out = 0
    for record_id, sources in labels.items():
        if Source.SHADOW in sources:
            weight = 1.0 / rate
        elif Source.ESCALATION in sources:
            weight = 1.0
        else:
            left_out += 1
            continue
        label = next(source for source in LABEL_PRECEDENCE if source in sources)
        agreement, _, confidence, features, cost = sources[label]
        premium_cost = next((entry[1] for entry in sources.values() if entry[1] is not None), mean_teacher)
        examples.append(Example(record_id=record_id, confidence=confidence, features=features if isinstance(features, dict) else None,
                                agreement=agreement, weight=weight, local_cost=cost, premium_cost=premium_cost))
        by_source[label] = by_source.get(label, 0) + 1
    return examples, by_source, local.count(), left_out


def scored(examples: list[Example], router: Any = None) -> list[curves.Labelled]:
    """The examples as the curve sees them, scored by `router` (learned weights) or by confidence."""
    items = []
    for example in examples:
        score = example.confidence
        if router is not None and example.features is not None:
            score = router.predict_one(example.features)
        if score is None:
            continue
        items.append(curves.Labelled(score=score, local_quality=example.agreement, local_cost=example.local_cost,
                                     premium_cost=example.premium_cost, weight=example.weight))
    return items


def labelled_window(policy: RoutingPolicy, *, days: float, now: datetime | None = None) -> Window:
    """The window of the last `days`, scored by the router the policy uses now (its learned router, or
    confidence), whatever scored each record when it was answered."""
    until = now or timezone.now()
    since = until - timedelta(days=days)
    examples, by_source, records, left_out = labelled_examples(policy, since=since, until=until)
    return Window(policy=policy, since=since, until=until, items=scored(examples, learned_weights(policy)),
                  by_source=by_source, records=records, unused=left_out)


def evaluate(policy: RoutingPolicy, *, days: float | None = None, now: datetime | None = None) -> Evaluation:
    """The routing curve of the policy's window and RouteLLM's metrics on it (PGR, APGR, CPT)."""
    window = labelled_window(policy, days=days or policy.tune_window_days, now=now)
    if not window.items:
        return Evaluation(window=window, points=[], apgr=None, cpt={level: None for level in CPT_LEVELS})
    points = curves.curve(window.items)
    return Evaluation(window=window, points=points, apgr=curves.apgr(points),
                      cpt={level: curves.cpt(points, level) for level in CPT_LEVELS},
                      current=curves.at_floor(window.items, policy.confidence_floor))


def premium_share_cap(policy: RoutingPolicy, window: Window, *, now: datetime | None = None) -> tuple[float | None, str]:
    """The largest share of answers the tenant's remaining budget can send to premium until its period
    ends, at the window's pace and premium price; None without a budget (or nothing to price)."""
    if policy.tenant_id is None:
        return None, "global policy: no single budget"
    budget = Budget.objects.filter(tenant_id=policy.tenant_id).first()
    status = budget_status(budget)
    if status is None:
        return None, "no budget"
    priced = [item.premium_cost for item in window.items if item.premium_cost]
    if not priced or window.records == 0:
        return None, "no premium price seen in the window"
    per_escalation = float(sum(priced, Decimal("0")) / len(priced))
    moment = now or timezone.now()
    days_left = max((status["period_end"] - moment).total_seconds() / 86400, 0.0)
    expected = window.records / window.days * days_left
    if expected <= 0 or per_escalation <= 0:
        return None, "no traffic expected before the period ends"
    cap = float(status["remaining"]) / (expected * per_escalation)
    return min(1.0, cap), (f"{status['remaining']:.4f} left for ~{expected:.0f} answers until "
                           f"{status['period_end']:%Y-%m-%d} at {per_escalation:.6f} per escalation")


def tune(policy: RoutingPolicy, *, now: datetime | None = None) -> ThresholdChange:
    """One tuning run: refit the learned router when it is due, choose the floor, and record the
    decision whether or not it moves."""
    if policy.pk is None:
        raise ValueError("Only a saved policy can be tuned.")
    if policy.locked or not policy.auto_tune:
        why = "locked by an operator" if policy.locked else "auto-tune is off"
        return _record(policy, new=policy.confidence_floor, decided_by=ThresholdChange.DecidedBy.TUNER,
                       reason=f"Kept {policy.confidence_floor:.3f}: {why}.", evidence={})
    days = float(policy.tune_window_days)
    if policy.drift_flagged_at is not None:
        # After a drift the old records describe another traffic: look at the recent ones only.
        days = max(0.25, days / 4)
    shift = recent_shift(policy, days=days, now=now)
    shifted = shift is not None and shift.shifted
    if shifted:
        # The traffic changed within the window (the daily drift check would see it a day late): the
        # curve of the last hours only, and a router fitted on them.
        days = RECENT_HOURS / 24
    fitted = None
    if router_due(policy, now=now, shifted=shifted):
        fitted = fit_router(policy, days=days, now=now)
    evaluation = evaluate(policy, days=days, now=now)
    cap, cap_reason = premium_share_cap(policy, evaluation.window, now=now)
    metric = "quality" if policy.quality_metric == RoutingPolicy.QualityMetric.AGREEMENT else "pgr"
    decision = curves.choose_floor(
        evaluation.points, current=policy.confidence_floor, target=policy.quality_target, metric=metric,
        max_premium_share=cap, max_step=policy.tune_max_step, hysteresis=min(policy.tune_hysteresis, policy.tune_max_step),
        min_samples=policy.tune_min_samples, samples=len(evaluation.window.items), items=evaluation.window.items,
    )
    new = min(1.0, max(0.0, decision.floor))  # the "everything to premium" floor sits just above the top score
    evidence = evaluation.evidence() | {
        "target": {"metric": policy.quality_metric, "value": policy.quality_target},
        "budget": {"max_premium_share": _rounded(cap), "why": cap_reason},
        "drift_window": policy.drift_flagged_at is not None,
        "recent_shift": shift.evidence() if shift is not None else None,
        "router": _router_evidence(policy, fitted),
        "projected": {"premium_share": _rounded(decision.premium_share), "quality": _rounded(decision.quality),
                      "pgr": _rounded(decision.pgr), "cost_per_answer": _rounded(decision.cost, 8)},
    }
    return _record(policy, new=new, decided_by=ThresholdChange.DecidedBy.TUNER, reason=decision.reason, evidence=evidence)


# --- the learned router ------------------------------------------------------------------------------
ROUTER_REFIT = timedelta(days=1)  # at most one fit a day, unless a drift asks for a new one
ROUTER_MARGIN = 0.0  # a new router must beat the one in use by more than this on the same held-out records


def router_due(policy: RoutingPolicy, *, now: datetime | None = None, shifted: bool = False) -> bool:
    """A (re)fit is due without a router yet, after a drift or a shift within the tuner's window
    (`shifted`), a day after the last fit, or as soon as the labels gathered since the last fit are as
    many as it was fitted on (traffic that changes fast gets fresh routers fast, quiet traffic one a day)."""
    if shifted:
        return True
    latest = (LearnedRouter.objects.filter(policy=policy).order_by("-created_at")
              .values("created_at", "trained_on", "held_out").first())
    if latest is None:
        return True
    if policy.drift_flagged_at is not None and latest["created_at"] < policy.drift_flagged_at:
        return True
    if latest["created_at"] <= (now or timezone.now()) - ROUTER_REFIT:
        return True
    from routing import learned

    fresh = QualitySignal.objects.filter(
        record__policy=policy, source__in=[Source.SHADOW, Source.ESCALATION], created_at__gt=latest["created_at"]
    ).count()
    return fresh >= max(learned.MIN_TRAINING_ROWS, latest["trained_on"] + latest["held_out"])


def fit_router(policy: RoutingPolicy, *, days: float | None = None, now: datetime | None = None) -> LearnedRouter | None:
    """Fit a learned router on the window's labelled records, evaluate it on held-out ones beside the
    router in use (its learned router, or confidence), and put it in use only when its APGR is higher.
    Every fit is kept with its numbers, refused or not; None when there is too little to fit on."""
    from routing import learned

    until = now or timezone.now()
    examples, _, _, _ = labelled_examples(policy, since=until - timedelta(days=days or policy.tune_window_days), until=until)
    examples = [example for example in examples if example.features is not None]
    if len(examples) < learned.MIN_TRAINING_ROWS:
        return None
    train, held = learned.split_holdout(len(examples), seed=len(examples))
    training = [examples[i] for i in train]
    try:
        weights = learned.fit([e.features for e in training], [e.agreement for e in training],
                              sample_weight=[e.weight for e in training])
    except ValueError as exc:
        logger.info("learned router not fitted", extra={"policy": policy.pk, "why": str(exc)})
        return None
    held_out = [examples[i] for i in held]
    current = learned_weights(policy)
    apgr_new = _apgr(scored(held_out, weights))
    apgr_now = _apgr(scored(held_out, current))
    accepted = apgr_new is not None and (apgr_now is None or apgr_new > apgr_now + ROUTER_MARGIN)
    incumbent = "the learned router in use" if current is not None else "routing by confidence"
    reason = (f"APGR {apgr_new:.3f} vs {apgr_now:.3f} for {incumbent} on {len(held_out)} held-out records: "
              f"{'put in use' if accepted else 'refused'}") if apgr_new is not None and apgr_now is not None else (
              "no gap to recover on the held-out records: refused")
    # Confidence is always a candidate: a router that traffic has left behind gives way to it.
    apgr_confidence = _apgr(scored(held_out, None)) if current is not None else None
    retire = (not accepted and apgr_confidence is not None and apgr_now is not None
              and apgr_confidence > apgr_now + ROUTER_MARGIN)
    if retire:
        reason += f"; routing by confidence ({apgr_confidence:.3f}) now beats the router in use: back to confidence"
    with transaction.atomic():
        version = (LearnedRouter.objects.filter(policy=policy).order_by("-version").values_list("version", flat=True).first() or 0) + 1
        router = LearnedRouter.objects.create(
            policy=policy, version=version, weights=weights.to_json(), trained_on=len(training), held_out=len(held_out),
            apgr=apgr_new if apgr_new is not None else 0.0, baseline_apgr=apgr_now if apgr_now is not None else 0.0,
            accepted=accepted, reason=reason,
        )
        if accepted:
            _switch_router(policy, router, weights=weights, current=current, held_out=held_out)
        elif retire:
            _switch_router(policy, None, weights=None, current=current, held_out=held_out, why=reason)
    return router


def _switch_router(policy: RoutingPolicy, router: LearnedRouter | None, *, weights: Any, current: Any,
                   held_out: list[Example], why: str = "") -> None:
    """Put `router` in use (None: routing by confidence) with the floor that escalates the same share of
    the held-out records as the floor in use did under the old scores: a new router changes what a score
    means, not how much goes to premium. The tuner moves the floor from there."""
    old_items, new_items = scored(held_out, current), scored(held_out, weights)
    share = curves.at_floor(old_items, policy.confidence_floor).premium_share
    candidates = sorted({item.score for item in new_items} | {0.0})
    floor = min(candidates, key=lambda f: abs(curves.at_floor(new_items, f).premium_share - share))
    RoutingPolicy.objects.filter(pk=policy.pk).update(learned_router=router)
    policy.learned_router = router
    if router is None:
        what, evidence = f"Routing by confidence again ({why})", {"router": None}
    else:
        what = f"Learned router v{router.version} put in use ({router.reason})"
        evidence = {"router": {"version": router.version, "apgr": round(router.apgr, 4),
                               "baseline_apgr": round(router.baseline_apgr, 4)}}
    _record(policy, new=min(1.0, floor), decided_by=ThresholdChange.DecidedBy.TUNER,
            reason=f"{what}; the floor keeps the premium share it gave on the held-out records ({share:.1%}).",
            evidence=evidence)


def _apgr(items: list[curves.Labelled]) -> float | None:
    return curves.apgr(curves.curve(items)) if items else None


def _router_evidence(policy: RoutingPolicy, fitted: LearnedRouter | None) -> dict[str, Any]:
    evidence: dict[str, Any] = {"in_use": policy.learned_router.version if policy.learned_router_id else None}
    if fitted is not None:
        evidence["fitted"] = {"version": fitted.version, "accepted": fitted.accepted, "apgr": round(fitted.apgr, 4),
                              "baseline_apgr": round(fitted.baseline_apgr, 4), "reason": fitted.reason}
    return evidence


RECENT_HOURS = 3  # the tuner compares its window's last hours with the rest of it
# Below this many scores a side the χ² reading of PSI (curves.psi_noise_limit) is too rough to act on.
MIN_SHIFT_SCORES = 100


@dataclass(frozen=True)
class Shift:
    """The PSI of the window's last hours against the rest, and the PSI above which it is a shift: the
    larger of the conventional "moderate" level and what sampling alone exceeds once in a hundred checks."""

    psi: float
    limit: float
    recent: int
    older: int

    @property
    def shifted(self) -> bool:
        return self.psi > self.limit

    def evidence(self) -> dict[str, Any]:
        return {"psi": _rounded(self.psi), "limit": _rounded(self.limit), "recent": self.recent, "older": self.older,
                "shifted": self.shifted}


def recent_shift(policy: RoutingPolicy, *, days: float, now: datetime | None = None) -> Shift | None:
    """How far the local models' confidences over the window's last RECENT_HOURS moved from the rest of
    the window; None when either side has too few answers to compare."""
    until = now or timezone.now()
    split, since = until - timedelta(hours=RECENT_HOURS), until - timedelta(days=days)
    if split <= since:
        return None
    answers = InferenceRecord.objects.filter(policy=policy, purpose=InferenceRecord.Purpose.ANSWER, tier="local",
                                             confidence__isnull=False)
    recent = list(answers.filter(created_at__gte=split, created_at__lt=until).values_list("confidence", flat=True)[:20_000])
    older = list(answers.filter(created_at__gte=since, created_at__lt=split).values_list("confidence", flat=True)[:20_000])
    if len(recent) < MIN_SHIFT_SCORES or len(older) < MIN_SHIFT_SCORES:
        return None
    # A tuner run only narrows its own window on a shift (cheap, and undone by the next stable run), so it
    # acts from a moderate shift on; the daily drift check, which raises alerts, waits for PSI_SHIFTED.
    limit = max(curves.PSI_STABLE, curves.psi_noise_limit(len(older), len(recent)))
    return Shift(psi=curves.psi(older, recent), limit=limit, recent=len(recent), older=len(older))


def tune_all(*, now: datetime | None = None) -> list[ThresholdChange]:
    """The scheduled run: every saved policy with auto-tune on and not locked."""
    changes = []
    for policy in RoutingPolicy.objects.filter(auto_tune=True, locked=False).order_by("pk"):
        try:
            changes.append(tune(policy, now=now))
        except Exception:
            # One policy's trouble must not stop the others' tuning; the log says which and why.
            logger.exception("tuning failed", extra={"policy": policy.pk})
    return changes


def set_floor(policy: RoutingPolicy, value: float, *, actor: str, reason: str = "") -> ThresholdChange:
    """An operator's value, recorded like the tuner's."""
    if not 0 <= value <= 1:
        raise ValueError("A floor is between 0 and 1.")
    return _record(policy, new=value, decided_by=ThresholdChange.DecidedBy.OPERATOR, actor=actor,
                   reason=reason or f"Set by {actor}.", evidence={})


def roll_back(change: ThresholdChange, *, actor: str) -> ThresholdChange:
    """Return the policy to the floor it had before `change` (any earlier decision can be the target)."""
    return _record(change.policy, new=change.old, decided_by=ThresholdChange.DecidedBy.ROLLBACK, actor=actor,
                   reason=f"Rolled back by {actor} to {change.old:.3f}, the floor before the decision of "
                          f"{change.created_at:%Y-%m-%d %H:%M} UTC ({change.get_decided_by_display().lower()}).",
                   evidence={}, rolled_back_to=change)


@transaction.atomic
def _record(policy: RoutingPolicy, *, new: float, decided_by: str, reason: str, evidence: dict[str, Any],
            actor: str = "", rolled_back_to: ThresholdChange | None = None) -> ThresholdChange:
    # The policy row is locked so that a tuner run and an operator's click cannot interleave.
    locked = RoutingPolicy.objects.select_for_update().get(pk=policy.pk)
    old = locked.confidence_floor
    change = ThresholdChange.objects.create(policy=locked, old=old, new=new, decided_by=decided_by, actor=actor,
                                            reason=reason, evidence=evidence, rolled_back_to=rolled_back_to)
    if new != old:
        locked.confidence_floor = new
        # save() (not update()) so that this process forgets its cached policy at once; the others
        # see the new floor within MODELGATE_ROUTING_CACHE_SECONDS.
        locked.save(update_fields=["confidence_floor", "updated_at"])
        policy.confidence_floor = new
        logger.info("floor changed", extra={"policy": policy.pk, "old": old, "new": new, "by": decided_by})
    return change


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), digits)


def _point(point: curves.CurvePoint) -> dict[str, float | None]:
    return {"floor": _rounded(point.floor), "premium_share": _rounded(point.premium_share),
            "quality": _rounded(point.quality), "pgr": _rounded(point.pgr), "cost": _rounded(point.cost, 8)}


def _thinned(points: list[curves.CurvePoint]) -> list[curves.CurvePoint]:
    if len(points) <= CURVE_POINTS_KEPT:
        return points
    step = (len(points) - 1) / (CURVE_POINTS_KEPT - 1)
    return [points[round(i * step)] for i in range(CURVE_POINTS_KEPT)]
