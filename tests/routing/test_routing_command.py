"""`manage.py routing`: evaluate prints the curve and its metrics, tune and set-floor record their
decision, rollback returns to an earlier floor, history lists the decisions, drift runs the check."""
from __future__ import annotations

import io
import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from routing.models import InferenceRecord, QualitySignal, RoutingPolicy, ThresholdChange


@pytest.fixture
def policy(alice) -> RoutingPolicy:
    return RoutingPolicy.objects.create(
        tenant=alice.tenant, task="language_id", candidates=["lid-176", "teacher"], confidence_floor=0.2,
        quality_target=0.95, shadow_rate=0.5, tune_min_samples=50, tune_max_step=1.0, tune_hysteresis=0.0,
    )


def labelled(policy, n=300, *, seed=0, hours_ago=2):
    """Local answers with shadow labels: wrong ones score 0.2–0.55, right ones 0.65–0.95."""
    rng = random.Random(seed)
    examples = [(rng.uniform(0.20, 0.55), 0.0) if rng.random() < 0.25 else (rng.uniform(0.65, 0.95), 1.0) for _ in range(n)]
    created = timezone.now() - timedelta(hours=hours_ago)
    teacher = InferenceRecord.objects.create(
        tenant_id=policy.tenant_id, task=policy.task, model_slug="teacher", tier="premium", status="ok",
        purpose=InferenceRecord.Purpose.EVALUATION, cost=Decimal("0.001"), policy=policy, created_at=created,
    )
    records = InferenceRecord.objects.bulk_create([
        InferenceRecord(tenant_id=policy.tenant_id, task=policy.task, model_slug="lid-176", tier="local", status="ok",
                        policy=policy, floor=policy.confidence_floor, confidence=score, score=score, created_at=created)
        for score, _ in examples
    ])
    QualitySignal.objects.bulk_create([
        QualitySignal(record=record, source=QualitySignal.Source.SHADOW, agreement=agreement, teacher=teacher)
        for record, (_, agreement) in zip(records, examples)
    ])
    return records


def routing(*args: object) -> str:
    out = io.StringIO()
    call_command("routing", *[str(arg) for arg in args], stdout=out)
    return out.getvalue()


def test_evaluate_prints_the_metrics_and_the_curve_of_a_policy_with_labelled_records(policy):
    labelled(policy)
    output = routing("evaluate", "--policy", policy.pk, "--points", 5)
    lines = output.splitlines()
    assert lines[0].startswith(f"language_id (alpha) (#{policy.pk}): floor 0.200, 300 labelled of 300 local answers in 7.0 days")
    assert "shadow 300" in lines[0]
    assert "APGR 0." in output and "CPT(50%)" in output and "CPT(95%)" in output
    assert "now: premium" in output
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["floor", "premium"])
    rows = lines[header + 1:]
    assert len(rows) == 5
    floors = [float(row.split()[0]) for row in rows]
    assert floors == sorted(floors)


def test_evaluate_says_so_when_a_policy_has_no_labelled_records(policy, alice):
    other = RoutingPolicy.objects.create(tenant=alice.tenant, task="classification", candidates=[])
    labelled(policy)
    output = routing("evaluate")  # every policy
    assert "language_id (alpha)" in output and "APGR" in output
    own = output[output.index("classification (alpha)"):]
    assert f"(#{other.pk}): floor 0.500, 0 labelled of 0 local answers" in own and "no labels" in own
    assert "no labelled records: nothing to evaluate" in own and "APGR" not in own


def test_tune_of_one_policy_records_the_decision_and_prints_it(policy):
    labelled(policy)
    output = routing("tune", "--policy", policy.pk)
    change = ThresholdChange.objects.get(policy=policy)
    assert change.decided_by == "tuner" and change.changed and change.old == 0.2
    assert output.startswith(f"language_id (alpha): 0.200 → {change.new:.3f}. {change.reason}")
    policy.refresh_from_db()
    assert policy.confidence_floor == change.new


def test_tune_without_a_policy_skips_locked_ones(policy, alice):
    RoutingPolicy.objects.create(tenant=alice.tenant, task="classification", candidates=[], locked=True)
    output = routing("tune")
    assert output.count("\n") == 1 and output.startswith("language_id (alpha): kept 0.200.")
    assert ThresholdChange.objects.get().policy_id == policy.pk


def test_set_floor_records_an_operator_change(policy):
    output = routing("set-floor", policy.pk, 0.35, "--reason", "incident 7")
    assert output.strip() == "language_id (alpha): 0.200 → 0.350"
    change = ThresholdChange.objects.get()
    assert (change.decided_by, change.actor, change.old, change.new, change.reason) == (
        "operator", "manage.py", 0.2, 0.35, "incident 7")
    policy.refresh_from_db()
    assert policy.confidence_floor == 0.35


def test_set_floor_refuses_a_floor_above_one(policy):
    with pytest.raises(CommandError, match="between 0 and 1"):
        routing("set-floor", policy.pk, 1.5)
    policy.refresh_from_db()
    assert policy.confidence_floor == 0.2 and ThresholdChange.objects.count() == 0


def test_rollback_returns_to_the_floor_before_the_decision(policy):
    routing("set-floor", policy.pk, 0.35)
    first = ThresholdChange.objects.get()
    routing("set-floor", policy.pk, 0.6)
    output = routing("rollback", first.pk)
    assert output.strip() == "language_id (alpha): 0.600 → 0.200"
    back = ThresholdChange.objects.order_by("-created_at").first()
    assert (back.decided_by, back.actor, back.new, back.rolled_back_to_id) == ("rollback", "manage.py", 0.2, first.pk)
    policy.refresh_from_db()
    assert policy.confidence_floor == 0.2


def test_rollback_of_an_unknown_change_is_an_error(policy):
    with pytest.raises(CommandError, match="No threshold change 424242"):
        routing("rollback", 424242)


def test_history_lists_the_decisions_newest_first(policy):
    routing("set-floor", policy.pk, 0.35, "--reason", "first")
    routing("set-floor", policy.pk, 0.45, "--reason", "second")
    newest, oldest = ThresholdChange.objects.order_by("-created_at")
    lines = routing("history", policy.pk).splitlines()
    assert lines[0].startswith(f"#{newest.pk} ") and "operator" in lines[0] and lines[0].endswith("0.350 → 0.450  second")
    assert lines[1].startswith(f"#{oldest.pk} ") and lines[1].endswith("0.200 → 0.350  first")
    assert routing("history", policy.pk, "--limit", 1).splitlines() == lines[:1]


def test_drift_runs_the_check_and_says_what_it_found(policy):
    output = routing("drift", "--policy", policy.pk)
    assert output.strip() == "language_id (alpha): stable (PSI -) stable"


@pytest.mark.parametrize("args", [
    ("evaluate", "--policy", 424242), ("tune", "--policy", 424242), ("drift", "--policy", 424242),
    ("set-floor", 424242, 0.3), ("history", 424242),
], ids=lambda args: args[0])
def test_an_unknown_policy_id_is_an_error(db, args):
    with pytest.raises(CommandError, match="No routing policy 424242"):
        routing(*args)
