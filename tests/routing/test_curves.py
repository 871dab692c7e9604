"""The routing curve, RouteLLM's metrics, the tuner's choice of floor and PSI, on windows whose right
answers can be worked out by hand."""
from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from routing.curves import (
    PSI_SHIFTED, PSI_STABLE, CurvePoint, Decision, Labelled, apgr, at_floor, choose_floor, cpt, curve, psi, psi_noise_limit, psi_reading,
    random_routing_curve,
)


def shares(points: list[CurvePoint]) -> list[float]:
    return [round(point.premium_share, 9) for point in points]


# --- the curve -----------------------------------------------------------------------------
SMALL = [
    Labelled(score=0.9, local_quality=1.0, local_cost=Decimal("0.001"), premium_cost=Decimal("0.01")),
    Labelled(score=0.2, local_quality=0.0, local_cost=Decimal("0.001"), premium_cost=Decimal("0.01")),
    Labelled(score=0.5, local_quality=1.0, local_cost=Decimal("0.001"), premium_cost=Decimal("0.01")),
    Labelled(score=0.5, local_quality=0.0, local_cost=Decimal("0.001"), premium_cost=Decimal("0.01")),
]


def test_the_curve_runs_from_nothing_escalated_to_everything():
    points = curve(SMALL)
    assert [point.floor for point in points] == [0.0, 0.5, 0.9, math.nextafter(0.9, math.inf)]
    assert shares(points) == [0.0, 0.25, 0.75, 1.0]
    assert [point.quality for point in points] == pytest.approx([0.5, 0.75, 1.0, 1.0])
    assert [point.pgr for point in points] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    # An escalated item pays for its local attempt too: confidence routing runs local first.
    assert [point.cost for point in points] == pytest.approx([0.001, 0.0035, 0.0085, 0.011])


def test_equal_scores_escalate_together():
    points = curve(SMALL)
    # The two items scoring 0.5 go to premium at the same floor: no point escalates only one.
    assert 0.5 not in shares(points)
    assert at_floor(SMALL, 0.5).premium_share == 0.25
    assert at_floor(SMALL, 0.500001).premium_share == 0.75


def test_any_floor_between_the_points_can_be_evaluated():
    assert at_floor(SMALL, 0.1).premium_share == 0.0
    assert at_floor(SMALL, 0.3).premium_share == 0.25
    between = at_floor(SMALL, 0.7)
    assert between.floor == 0.7
    assert (between.premium_share, between.quality, between.pgr) == pytest.approx((0.75, 1.0, 1.0))
    assert at_floor(SMALL, 5.0).premium_share == 1.0


def test_weights_count_items_more_than_once():
    items = [Labelled(score=0.1, local_quality=0.0, weight=3.0), Labelled(score=0.8, local_quality=1.0)]
    points = curve(items)
    assert shares(points) == [0.0, 0.75, 1.0]
    assert points[0].quality == pytest.approx(0.25)
    assert points[1].pgr == 1.0


def test_a_curve_of_nothing_is_empty_and_a_point_of_nothing_is_an_error():
    assert curve([]) == []
    with pytest.raises(ValueError, match="No labelled records"):
        at_floor([], 0.5)


def test_a_score_that_is_not_a_number_is_refused():
    with pytest.raises(ValueError, match="finite"):
        curve([Labelled(score=math.nan, local_quality=1.0)])


def test_with_no_gap_to_recover_every_floor_recovers_it_all():
    items = [Labelled(score=s, local_quality=1.0) for s in (0.2, 0.4, 0.6)]
    points = curve(items)
    assert [point.pgr for point in points] == [1.0] * 4
    assert cpt(points, 0.95) == 0.0
    assert apgr(points) == 1.0


# --- APGR and CPT --------------------------------------------------------------------------
def perfectly_separated(n: int, wrong: int, *, tied: bool = False) -> list[Labelled]:
    """Every wrong local answer scores below every right one."""
    items = [Labelled(score=0.1 if tied else 0.4 * i / wrong, local_quality=0.0) for i in range(wrong)]
    items += [Labelled(score=0.5 + 0.5 * i / (n - wrong), local_quality=1.0) for i in range(n - wrong)]
    return items


def test_perfect_routing_recovers_the_gap_by_escalating_only_the_wrong_answers():
    points = curve(perfectly_separated(1000, 200))
    # PGR climbs linearly to 1 over the wrong share e = 0.2, then stays: area 1 − e/2.
    assert apgr(points) == pytest.approx(1 - 0.2 / 2)
    # With distinct scores, 95% of the gap takes 95% of the wrong answers: 190 of 1000.
    assert cpt(points, 0.95) == pytest.approx(0.19)
    assert cpt(points, 0.5) == pytest.approx(0.10)
    assert cpt(points, 1.0) == pytest.approx(0.20)


def test_tied_wrong_answers_must_all_go_before_any_of_the_gap_is_recovered():
    points = curve(perfectly_separated(1000, 200, tied=True))
    assert shares(points)[:3] == [0.0, 0.2, 0.201]
    assert cpt(points, 0.95) == pytest.approx(0.2)
    # The trapezoid between (0, 0) and (0.2, 1) is what escalating part of the tied group at random gives.
    assert apgr(points) == pytest.approx(0.9)


def test_a_target_beyond_full_recovery_is_unreachable():
    assert cpt(curve(perfectly_separated(100, 10)), 1.01) is None
    assert cpt([], 0.5) is None


def random_window(n: int, seed: int) -> list[Labelled]:
    rng = np.random.default_rng(seed)
    scores, right = rng.random(n), rng.random(n) < 0.7
    return [Labelled(score=float(s), local_quality=float(r)) for s, r in zip(scores, right)]


def test_scores_that_know_nothing_route_like_a_coin():
    items = random_window(20_000, seed=7)
    points = curve(items)
    assert apgr(points) == pytest.approx(0.5, abs=0.02)
    # At every share, its quality is close to random routing's, which is linear in premium share.
    baseline = random_routing_curve(items, levels=11)
    for expected in baseline:
        assert at_share(points, expected.premium_share).quality == pytest.approx(expected.quality, abs=0.01)


def at_share(points: list[CurvePoint], share: float) -> CurvePoint:
    return min(points, key=lambda point: abs(point.premium_share - share))


def test_random_routing_is_linear_in_premium_share_and_scores_one_half():
    items = random_window(500, seed=1)
    baseline = random_routing_curve(items, levels=5)
    q_local, q_premium = curve(items)[0].quality, 1.0
    assert shares(baseline) == [0.0, 0.25, 0.5, 0.75, 1.0]
    for point in baseline:
        assert math.isnan(point.floor)
        assert point.quality == pytest.approx(q_local + point.premium_share * (q_premium - q_local))
        assert point.pgr == pytest.approx(point.premium_share)
    assert apgr(baseline) == pytest.approx(0.5)


def test_a_router_that_scores_everything_alike_is_no_better_than_random():
    items = [Labelled(score=0.7, local_quality=float(i % 2)) for i in range(10)]
    points = curve(items)
    assert shares(points) == [0.0, 1.0]
    assert apgr(points) == pytest.approx(0.5)


# --- choosing the floor --------------------------------------------------------------------
# Ten items scoring 0.05, 0.15 … 0.95; the local answers to the three lowest are wrong. The floor
# 0.35 escalates exactly those three (premium share 30%, PGR 1.0); each step of 0.1 below it
# recovers a third less of the gap.
TEN = [Labelled(score=0.05 + 0.1 * i, local_quality=0.0 if i < 3 else 1.0, premium_cost=0.01) for i in range(10)]
POINTS = curve(TEN)


def choose(**overrides: object) -> Decision:
    arguments: dict[str, object] = dict(
        current=0.35, target=0.95, metric="pgr", max_premium_share=None, max_step=0.5, hysteresis=0.02,
        min_samples=10, samples=10, items=TEN,
    )
    arguments.update(overrides)
    return choose_floor(POINTS, **arguments)  # type: ignore[arg-type]


def test_it_picks_the_most_local_floor_that_meets_the_target():
    decision = choose(current=0.8)
    assert decision.floor == pytest.approx(0.35)
    assert not decision.kept
    assert (decision.premium_share, decision.pgr, decision.quality) == pytest.approx((0.3, 1.0, 1.0))
    assert decision.cost == pytest.approx(0.003)
    assert "most local floor" in decision.reason and "PGR ≥ 0.950" in decision.reason


def test_it_keeps_the_floor_that_is_already_right():
    decision = choose(current=0.35)
    assert decision.kept and decision.floor == 0.35
    assert decision.reason.endswith("The floor stays at 0.350.")


def test_a_quality_target_reads_the_quality_column():
    # Mean quality is 0.7 locally; escalating the two lowest answers (floor 0.25) makes it 0.9.
    decision = choose(metric="quality", target=0.9, current=0.6)
    assert decision.floor == pytest.approx(0.25)
    assert decision.quality == pytest.approx(0.9)


def test_it_keeps_the_floor_until_there_are_enough_labelled_records():
    decision = choose(current=0.8, samples=40, min_samples=100)
    assert decision.kept and decision.floor == 0.8
    assert decision.reason.startswith("Not enough labelled records: 40 of 100")
    assert decision.premium_share == pytest.approx(0.8)


def test_with_no_curve_there_is_nothing_to_project():
    decision = choose_floor(
        [], current=0.5, target=0.95, metric="pgr", max_premium_share=None, max_step=0.1, hysteresis=0.02,
        min_samples=100, samples=0,
    )
    assert decision.kept and decision.premium_share is None and decision.cost is None


def test_one_run_moves_the_floor_at_most_one_step_in_the_chosen_direction():
    down = choose(current=0.8, max_step=0.1)
    assert down.floor == pytest.approx(0.7)
    assert "bounded to 0.100" in down.reason
    # The bounded floor is no point of the curve: it is evaluated on the items.
    assert down.premium_share == pytest.approx(0.7)
    up = choose(current=0.0, max_step=0.1)
    assert up.floor == pytest.approx(0.1)
    assert (up.premium_share, up.pgr) == pytest.approx((0.1, 1 / 3))


def test_a_move_smaller_than_the_hysteresis_is_not_made():
    decision = choose(current=0.36, hysteresis=0.02)
    assert decision.kept and decision.floor == 0.36
    assert "under the hysteresis of 0.020" in decision.reason
    assert not choose(current=0.4, hysteresis=0.02).kept


def test_a_tighter_budget_cap_moves_the_floor_toward_local():
    roomy = choose(current=0.5, max_premium_share=0.5)
    assert roomy.floor == pytest.approx(0.35)
    tight = choose(current=0.5, max_premium_share=0.2)
    tighter = choose(current=0.5, max_premium_share=0.1)
    assert tighter.floor < tight.floor < roomy.floor
    assert (tight.floor, tight.premium_share, tight.pgr) == pytest.approx((0.25, 0.2, 2 / 3))
    assert (tighter.floor, tighter.premium_share) == pytest.approx((0.15, 0.1))


def test_when_the_target_is_out_of_reach_within_the_cap_the_budget_wins():
    decision = choose(current=0.5, max_premium_share=0.2)
    assert decision.premium_share <= 0.2
    assert decision.pgr < 0.95
    assert "No floor reaches PGR 0.950 within the 20.0% premium-share cap" in decision.reason
    assert "the cap allows" in decision.reason


def test_a_target_within_the_cap_is_met_without_spending_the_whole_cap():
    decision = choose(current=0.5, target=0.6, max_premium_share=0.3)
    assert (decision.floor, decision.premium_share) == pytest.approx((0.25, 0.2))


def test_without_a_cap_an_unreachable_target_sends_everything_to_premium():
    decision = choose(metric="quality", target=1.01, current=0.9, max_step=0.5)
    assert decision.floor == pytest.approx(math.nextafter(0.95, math.inf))
    assert decision.premium_share == 1.0
    assert "sends everything to premium" in decision.reason


def test_the_step_bound_never_leaves_a_plan_to_overspend():
    # At 0.8, 80% goes to premium; one step of 0.1 would still plan 70% against a 20% cap.
    decision = choose(current=0.8, max_premium_share=0.2, max_step=0.1)
    assert decision.floor == pytest.approx(0.25)
    assert decision.premium_share == pytest.approx(0.2)
    assert "over the cap" in decision.reason


def test_hysteresis_does_not_hold_a_floor_that_overspends():
    # 0.251 escalates three items (30%) against a 20% cap; 0.25, a hair lower, escalates two.
    decision = choose(current=0.251, max_premium_share=0.2, hysteresis=0.02)
    assert decision.floor == pytest.approx(0.25) and not decision.kept


def test_without_the_items_a_bounded_floor_is_read_off_the_points():
    # 0.03 lies below the lowest score (0.05): exactly, nothing escalates; the points alone cannot
    # tell, and count the lowest score as escalated.
    with_items = choose(current=0.0, max_step=0.03, hysteresis=0.01)
    without = choose(current=0.0, max_step=0.03, hysteresis=0.01, items=None)
    assert with_items.floor == without.floor == pytest.approx(0.03)
    assert with_items.premium_share == 0.0
    assert without.premium_share == pytest.approx(0.1)
    # Above the lowest score the points are exact.
    assert choose(current=0.8, max_step=0.1, items=None).premium_share == pytest.approx(0.7)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_step": 0.0}, "max_step"),
        ({"max_step": 0.01, "hysteresis": 0.02}, "hysteresis"),
        ({"max_premium_share": 1.5}, "max_premium_share"),
        ({"metric": "agreement"}, "metric"),
    ],
)
def test_it_refuses_settings_it_could_never_act_on(overrides, message):
    with pytest.raises(ValueError, match=message):
        choose(**overrides)


# --- PSI -----------------------------------------------------------------------------------
def test_scores_from_the_same_distribution_are_stable():
    rng = np.random.default_rng(11)
    value = psi(rng.beta(5, 2, 5000), rng.beta(5, 2, 5000))
    assert value == pytest.approx(0.0, abs=0.02)
    assert psi_reading(value) == "stable"


def test_scores_that_moved_are_shifted():
    rng = np.random.default_rng(12)
    value = psi(rng.beta(5, 2, 5000), rng.beta(2, 5, 5000))
    assert value > PSI_SHIFTED
    assert psi_reading(value) == "shifted"
    assert psi_reading((PSI_STABLE + PSI_SHIFTED) / 2) == "moderate"


def test_saturated_scores_share_their_edges_and_empty_bins_stay_finite():
    reference = [1.0] * 900 + [0.5] * 100  # nine of ten quantile edges fall on 1.0
    assert psi(reference, reference) == pytest.approx(0.0)
    # Nothing at or above 1.0 any more: that bin is empty in the current window, and PSI stays finite.
    moved = psi(reference, [0.5] * 1000)
    assert math.isfinite(moved) and moved > PSI_SHIFTED


def test_psi_needs_scores_on_both_sides():
    with pytest.raises(ValueError):
        psi([], [0.5])


def test_the_psi_noise_limit_is_exceeded_by_chance_about_as_often_as_it_says():
    rng = np.random.default_rng(0)
    limit = psi_noise_limit(2100, 300)
    alarms = sum(psi(rng.beta(2, 1, 2100), rng.beta(2, 1, 300)) > limit for _ in range(400))
    assert alarms <= 12  # 1% asked for: 4 expected out of 400, and the sampling spread around it
    # Fewer scores, more noise: a small sample needs a larger PSI before it counts as a shift.
    assert psi_noise_limit(100, 100) > psi_noise_limit(1000, 1000) > psi_noise_limit(10_000, 10_000)
    with pytest.raises(ValueError):
        psi_noise_limit(0, 10)
