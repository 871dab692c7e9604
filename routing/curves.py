"""The routing curve of a window of labelled records (premium share, quality and cost at every floor),
RouteLLM's metrics over it (PGR, APGR, CPT), the tuner's choice of floor, and score drift (PSI)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import numpy as np

# The conventional reading of a population stability index.
PSI_STABLE = 0.1  # below: the scores look like the reference's
PSI_SHIFTED = 0.25  # above: the scores moved; between the two, a moderate shift

# Shares and PGRs are sums of floats: a PGR of exactly 0.95 must meet a 0.95 target even when it is
# computed as 0.9499999999999999.
_TOLERANCE = 1e-9
# A quality gap smaller than this is rounding, not something a premium call can recover.
_NO_GAP = 1e-12
# Stands in for an empty bin's share: the PSI's log term is infinite at zero, and one empty bin
# would otherwise make any window look infinitely shifted.
_PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class Labelled:
    """One answered item of the window, with what we learnt about it."""

    score: float  # what the floor applies to: a local model's confidence or a learned router's probability
    local_quality: float  # 0..1: agreement of the local answer with the premium teacher
    premium_quality: float = 1.0  # the teacher stands in for the truth
    local_cost: Decimal | float = 0.0
    # What sending this item to premium costs (measured, or estimated where it was not sent); 0 when
    # the window only judges quality.
    premium_cost: Decimal | float = 0.0
    weight: float = 1.0  # e.g. the inverse of the rate at which such items were sampled for labelling


@dataclass(frozen=True)
class CurvePoint:
    """What routing the window with one floor would have given: items scoring below it escalate."""

    floor: float
    premium_share: float  # weighted share of items escalated
    quality: float  # weighted mean: premium quality where escalated, local quality where kept
    cost: float  # weighted mean per item; a projection, so float rather than money
    pgr: float  # share of the local→premium quality gap recovered


@dataclass(frozen=True)
class _Window:
    """The items as sorted arrays, so every floor's point is a prefix sum away."""

    scores: np.ndarray  # ascending
    weight: np.ndarray  # cumulative, with a leading 0: weight[k] is the weight of the k lowest scores
    gain: np.ndarray  # cumulative weighted (premium − local) quality, likewise
    premium_cost: np.ndarray  # cumulative weighted premium cost, likewise
    local_quality: float  # weighted sum over all items
    local_cost: float  # weighted sum over all items

    @property
    def total(self) -> float:
        return float(self.weight[-1])

    @property
    def q_local(self) -> float:
        return self.local_quality / self.total

    @property
    def q_premium(self) -> float:
        return (self.local_quality + float(self.gain[-1])) / self.total

    def point(self, floor: float, escalated: int) -> CurvePoint:
        """The point when the `escalated` lowest-scoring items go to premium."""
        quality = (self.local_quality + float(self.gain[escalated])) / self.total
        return CurvePoint(
            floor=floor,
            premium_share=float(self.weight[escalated]) / self.total,
            quality=quality,
            # Confidence routing runs the local model first, so an escalated item costs both.
            cost=(self.local_cost + float(self.premium_cost[escalated])) / self.total,
            pgr=_pgr(quality, self.q_local, self.q_premium),
        )


def _pgr(quality: float, q_local: float, q_premium: float) -> float:
    gap = q_premium - q_local
    # With no gap (the local model already does as well as premium on this window), every floor
    # recovers all there is to recover: PGR is 1.0 everywhere, so a PGR target keeps everything local.
    if gap <= _NO_GAP:
        return 1.0
    return (quality - q_local) / gap


def _window(items: Sequence[Labelled]) -> _Window:
    if not items:
        raise ValueError("No labelled records: a routing curve needs at least one.")
    scores = np.array([item.score for item in items], dtype=np.float64)
    weights = np.array([item.weight for item in items], dtype=np.float64)
    local_quality = np.array([item.local_quality for item in items], dtype=np.float64)
    premium_quality = np.array([item.premium_quality for item in items], dtype=np.float64)
    local_cost = np.array([float(item.local_cost) for item in items], dtype=np.float64)
    premium_cost = np.array([float(item.premium_cost) for item in items], dtype=np.float64)
    # A NaN score would sort anywhere and escalate at no floor: refuse it rather than mis-draw the curve.
    if not np.all(np.isfinite(scores)):
        raise ValueError("Every routing score must be a finite number.")
    if np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError("Weights must be non-negative, and not all zero.")
    order = np.argsort(scores, kind="stable")
    weights = weights[order]

    def cumulative(values: np.ndarray) -> np.ndarray:
        return np.concatenate(([0.0], np.cumsum(values)))

    return _Window(
        scores=scores[order],
        weight=cumulative(weights),
        gain=cumulative(weights * (premium_quality[order] - local_quality[order])),
        premium_cost=cumulative(weights * premium_cost[order]),
        local_quality=float(np.dot(weights, local_quality[order])),
        local_cost=float(np.dot(weights, local_cost[order])),
    )


def curve(items: Sequence[Labelled]) -> list[CurvePoint]:
    """One point per floor that changes the decision, from nothing escalated to everything, sorted by
    premium share. Equal scores escalate together: no floor can split them."""
    if not items:
        return []
    window = _window(items)
    distinct, first = np.unique(window.scores, return_index=True)
    # Floor 0 escalates nothing (scores below 0 only where a score can be negative); each further
    # distinct score escalates every lower one; just above the highest score escalates everything.
    floors = [min(0.0, float(distinct[0])), *(float(s) for s in distinct[1:]), math.nextafter(float(distinct[-1]), math.inf)]
    escalated = [0, *(int(k) for k in first[1:]), len(window.scores)]
    return [window.point(floor, count) for floor, count in zip(floors, escalated)]


def at_floor(items: Sequence[Labelled], floor: float) -> CurvePoint:
    """The point for any floor, also one between the curve's points (a step-bounded move lands there)."""
    window = _window(items)
    return window.point(floor, int(np.searchsorted(window.scores, floor, side="left")))


def random_routing_curve(items: Sequence[Labelled], levels: int = 11) -> list[CurvePoint]:
    """The baseline: a router that escalates each item with probability c, at c = 0, 1/(levels-1), … 1.

    Its expected quality and cost are linear in premium share and its PGR equals the share, so its
    APGR is 0.5. It has no floor: `floor` is NaN.
    """
    if levels < 2:
        raise ValueError("A random routing curve needs at least two levels (0 and 1).")
    window = _window(items)
    nothing, everything = window.point(math.nan, 0), window.point(math.nan, len(window.scores))
    points = []
    for share in np.linspace(0.0, 1.0, levels).tolist():
        quality = (1 - share) * nothing.quality + share * everything.quality
        cost = (1 - share) * nothing.cost + share * everything.cost
        points.append(CurvePoint(math.nan, share, quality, cost, _pgr(quality, nothing.quality, everything.quality)))
    return points


def apgr(points: Sequence[CurvePoint]) -> float:
    """Average PGR over premium share: the trapezoid area under PGR(share), divided by the share range
    the points span (all of [0, 1] for a curve from `curve`).

    This is RouteLLM's APGR, (AUC − AUC_weak) / (AUC_strong − AUC_weak) with trapezoid AUCs over the
    share of strong-model calls, which reduces to the mean of PGR over share. Trapezoids rather than
    steps because a share between two floors is reached by escalating part of the boundary's tied
    group at random, and that gives exactly the straight line between the two points; so a router
    that scores every item alike gets 0.5, as random routing does, instead of 0 or 1 by a step
    convention. Perfect routing of a window whose local answers are wrong on a share e gets 1 − e/2.
    """
    if not points:
        raise ValueError("APGR needs at least one curve point.")
    ordered = sorted(points, key=lambda point: point.premium_share)
    shares = np.array([point.premium_share for point in ordered])
    pgrs = np.array([point.pgr for point in ordered])
    span = float(shares[-1] - shares[0])
    if span <= 0:
        return float(pgrs.mean())
    return float(np.trapezoid(pgrs, shares) / span)


def cpt(points: Sequence[CurvePoint], recovered: float) -> float | None:
    """Call-performance threshold: the smallest premium share whose PGR ≥ `recovered` (CPT(0.5) is
    the share of premium calls needed to recover half the gap); None when no point reaches it.

    Taken from the points, not interpolated as RouteLLM's evaluation does: the answer is a share
    some floor actually achieves, at most one score group above the interpolated one.
    """
    for point in sorted(points, key=lambda point: point.premium_share):
        if point.pgr >= recovered - _TOLERANCE:
            return point.premium_share
    return None


@dataclass
class Decision:
    """The tuner's choice of floor and its projection on the window it was made from."""

    floor: float
    kept: bool  # the floor stays where it was
    reason: str
    # At the chosen floor; None when there was no curve to project from.
    premium_share: float | None
    quality: float | None
    pgr: float | None
    cost: float | None


def choose_floor(
    points: Sequence[CurvePoint],
    *,
    current: float,
    target: float,
    metric: Literal["pgr", "quality"],
    max_premium_share: float | None,
    max_step: float,
    hysteresis: float,
    min_samples: int,
    samples: int,
    items: Sequence[Labelled] | None = None,
) -> Decision:
    """The floor that serves the most locally while meeting the target within the budget's premium
    share, moved at most `max_step` from `current`, and not moved at all by less than `hysteresis`.

    When the target cannot be met within `max_premium_share`, the budget wins: the floor that spends
    the most the cap allows. Pass the window's `items` to project a step-bounded floor exactly;
    without them it is read off the points (exact above the lowest score, and otherwise counting the
    lowest scores as escalated, which can only overstate premium share).
    """
    if metric not in ("pgr", "quality"):
        raise ValueError(f"Unknown metric {metric!r}: 'pgr' or 'quality'.")
    if max_step <= 0:
        raise ValueError("max_step must be positive.")
    # A step smaller than the hysteresis could never be taken: the tuner would be stuck.
    if not 0 <= hysteresis <= max_step:
        raise ValueError("hysteresis must be between 0 and max_step.")
    if max_premium_share is not None and not 0 <= max_premium_share <= 1:
        raise ValueError("max_premium_share must be between 0 and 1, or None for no cap.")

    ordered = sorted(points, key=lambda point: (point.premium_share, point.floor))

    def project(floor: float) -> CurvePoint:
        if items:
            return at_floor(items, floor)
        return _lookup(ordered, floor)

    def decided(floor: float, reason: str) -> Decision:
        projected = project(floor) if ordered else None
        return Decision(
            floor=floor,
            kept=floor == current,
            reason=reason,
            premium_share=projected.premium_share if projected else None,
            quality=projected.quality if projected else None,
            pgr=projected.pgr if projected else None,
            cost=projected.cost if projected else None,
        )

    if samples < min_samples or not ordered:
        return decided(current, f"Not enough labelled records: {samples} of {min_samples}; the floor stays at {current:.3f}.")

    name = "PGR" if metric == "pgr" else "quality"

    def value(point: CurvePoint) -> float:
        return point.pgr if metric == "pgr" else point.quality

    def affordable(point: CurvePoint) -> bool:
        return max_premium_share is None or point.premium_share <= max_premium_share + _TOLERANCE

    cap = "" if max_premium_share is None else f" within the {max_premium_share:.1%} premium-share cap"
    # The first point escalates nothing, so every cap leaves at least one candidate.
    within = [point for point in ordered if affordable(point)]
    meeting = [point for point in within if value(point) >= target - _TOLERANCE]
    if meeting:
        wanted = meeting[0]
        reasons = [
            f"Floor {wanted.floor:.3f} is the most local floor with {name} ≥ {target:.3f}{cap} "
            f"({name} {value(wanted):.3f} at premium share {wanted.premium_share:.1%})."
        ]
    else:
        wanted = within[-1]
        # Budget wins: never plan to spend beyond the cap, even when that leaves the target unmet;
        # as a budget runs down (a smaller cap), routing moves toward local.
        most = "everything" if wanted.premium_share >= 1 - _TOLERANCE else "the most"
        reasons = [
            f"No floor reaches {name} {target:.3f}{cap}; floor {wanted.floor:.3f} sends {most} to premium"
            f"{' the cap allows' if cap else ''} ({name} {value(wanted):.3f} at premium share {wanted.premium_share:.1%})."
        ]

    # A curve floor is a score, and 0.05 + 0.3 is not 0.35: a difference of rounding is no move.
    new = current if abs(wanted.floor - current) <= _TOLERANCE else wanted.floor
    if abs(new - current) > max_step + _TOLERANCE:
        bounded = current + math.copysign(max_step, new - current)
        over = project(bounded)
        if not affordable(over):
            # Stepping down part of the way would still plan to overspend: the budget outranks the step bound.
            reasons.append(
                f"A step of {max_step:.3f} would leave premium share at {over.premium_share:.1%}, over the cap, "
                f"so the floor moves the whole way from {current:.3f}."
            )
        else:
            new = bounded
            reasons.append(f"The move from {current:.3f} is bounded to {max_step:.3f}: floor {new:.3f}.")

    if new == current:
        reasons.append(f"The floor stays at {current:.3f}.")
    elif abs(new - current) < hysteresis:
        # Hysteresis keeps a floor that is good enough from flapping; it never keeps one that is not.
        now = project(current)
        if not affordable(now):
            reasons.append(
                f"The move is under the hysteresis of {hysteresis:.3f}, but at {current:.3f} premium share "
                f"{now.premium_share:.1%} is over the cap, so the floor moves."
            )
        elif meeting and value(now) < target - _TOLERANCE:
            reasons.append(
                f"The move is under the hysteresis of {hysteresis:.3f}, but at {current:.3f} {name} "
                f"{value(now):.3f} misses the target, so the floor moves."
            )
        else:
            reasons.append(
                f"The move from {current:.3f} to {new:.3f} is under the hysteresis of {hysteresis:.3f}; "
                f"the floor stays at {current:.3f}."
            )
            new = current

    decision = decided(new, " ".join(reasons))
    if not decision.kept:
        decision.reason += (
            f" Projected: premium share {decision.premium_share:.1%}, quality {decision.quality:.3f}, "
            f"PGR {decision.pgr:.3f}, cost {decision.cost:.6f} per item."
        )
    return decision


def _lookup(ordered: Sequence[CurvePoint], floor: float) -> CurvePoint:
    """The point of the lowest curve floor at or above `floor`: a floor between two distinct scores
    escalates what the next score's point escalates."""
    by_floor = sorted(ordered, key=lambda point: point.floor)
    for point in by_floor:
        if point.floor >= floor:
            return point
    return by_floor[-1]


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population stability index of `current` routing scores against `reference`: bins at the
    reference's quantiles, Σ (c − r) · ln(c / r) over bins. See PSI_STABLE and PSI_SHIFTED."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs scores in both the reference and the current window.")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cur))):
        raise ValueError("Every routing score must be a finite number.")
    if bins < 2:
        raise ValueError("PSI needs at least two bins.")
    # Quantile edges give each bin a similar share of the reference; scores that pile up on one
    # value (a saturated confidence of 1.0) repeat an edge, and a repeated edge is one edge.
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))

    def shares(values: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
        return np.maximum(counts / values.size, _PSI_EPSILON)

    expected, actual = shares(ref), shares(cur)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_noise_limit(n_reference: int, n_current: int, *, bins: int = 10, false_alarm: float = 0.01) -> float:
    """The PSI that two samples of these sizes drawn from one distribution exceed with probability
    `false_alarm`. With no shift, PSI · n_r·n_c / (n_r + n_c) is close to χ² with bins − 1 degrees of
    freedom (for a hundred scores a side and more), so small samples need a larger PSI to count."""
    if n_reference < 1 or n_current < 1:
        raise ValueError("PSI needs scores in both the reference and the current window.")
    from scipy.stats import chi2  # scipy comes with scikit-learn; only the tuner and drift check ask

    return float(chi2.ppf(1.0 - false_alarm, bins - 1) * (1.0 / n_reference + 1.0 / n_current))


def psi_reading(value: float) -> Literal["stable", "moderate", "shifted"]:
    """The conventional reading of a PSI value."""
    if value < PSI_STABLE:
        return "stable"
    return "moderate" if value <= PSI_SHIFTED else "shifted"
