"""The self-tuning admin: a policy's page shows its routing curve and decisions; operators lock, unlock,
tune, set the floor (recorded as theirs) and roll back; decisions are an audit trail nobody edits;
records are marked good or bad as operator quality signals."""
from __future__ import annotations

import json
import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from routing import tuning
from routing.models import InferenceRecord, LearnedRouter, QualitySignal, RoutingPolicy, ThresholdChange

POLICIES = "/admin/routing/routingpolicy/"
CHANGES = "/admin/routing/thresholdchange/"
RECORDS = "/admin/routing/inferencerecord/"


@pytest.fixture
def policy(alice, starter) -> RoutingPolicy:
    return RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-176"],
                                        confidence_floor=0.2, shadow_rate=0.5, tune_min_samples=50, tune_max_step=1.0,
                                        tune_hysteresis=0.0)


@pytest.fixture
def operator(db, client):
    user = get_user_model().objects.create_superuser("ops-anna", "", "a-long-password-1")
    client.force_login(user)
    return client


def labelled(policy, n=200, *, seed=0):
    """Local answers of the last hours with shadow labels: wrong ones score low, right ones high."""
    rng = random.Random(seed)
    examples = [(rng.uniform(0.20, 0.55), 0.0) if rng.random() < 0.25 else (rng.uniform(0.65, 0.95), 1.0) for _ in range(n)]
    created = timezone.now() - timedelta(hours=3)
    teacher = InferenceRecord.objects.create(
        tenant_id=policy.tenant_id, task=policy.task, model_slug="teacher", tier="premium", status="ok",
        purpose=InferenceRecord.Purpose.EVALUATION, cost=Decimal("0.001"), policy=policy, created_at=created,
    )
    records = InferenceRecord.objects.bulk_create([
        InferenceRecord(tenant_id=policy.tenant_id, task=policy.task, model_slug="lid-176", tier="local", status="ok",
                        policy=policy, floor=policy.confidence_floor, confidence=score, score=score, created_at=created,
                        request_id=f"req-{i:04d}")
        for i, (score, _) in enumerate(examples)
    ])
    QualitySignal.objects.bulk_create([
        QualitySignal(record=record, source=QualitySignal.Source.SHADOW, agreement=agreement, teacher=teacher)
        for record, (_, agreement) in zip(records, examples)
    ])
    return records


def form_data(policy: RoutingPolicy, **changes: object) -> dict[str, object]:
    """The policy's change form as the browser sends it back, with `changes`."""
    fields = {
        "tenant": policy.tenant_id or "", "task": policy.task, "candidates": json.dumps(policy.candidates),
        "complexity_threshold": policy.complexity_threshold, "confidence_floor": policy.confidence_floor,
        "on_budget_exhausted": policy.on_budget_exhausted, "cache_enabled": policy.cache_enabled,
        "cache_ttl_seconds": policy.cache_ttl_seconds, "auto_tune": policy.auto_tune, "locked": policy.locked,
        "quality_metric": policy.quality_metric, "quality_target": policy.quality_target, "shadow_rate": policy.shadow_rate,
        "tune_window_days": policy.tune_window_days, "tune_min_samples": policy.tune_min_samples,
        "tune_max_step": policy.tune_max_step, "tune_hysteresis": policy.tune_hysteresis,
    } | changes
    # An unticked checkbox is not sent at all.
    return {name: ("on" if value is True else value) for name, value in fields.items() if value is not False} | {"_save": "Save"}


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_staff_see_the_routing_curve_and_the_recent_decisions(operator, policy):
    labelled(policy)
    change = tuning.set_floor(policy, 0.3, actor="ops", reason="incident 9")
    response = operator.get(f"{POLICIES}{policy.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in page and 'aria-label="routing curve"' in page
    assert page.count("<polyline") == 2 and "<circle" in page  # PGR, quality, and the floor in force
    assert "200 labelled of 200 local answers; APGR 0." in page and "CPT(95%)" in page
    assert "incident 9" in page and "0.200 → 0.300" in page
    assert f"{CHANGES}{change.pk}/change/" in page


def test_a_policy_without_labels_says_so_instead_of_a_curve(operator, policy):
    page = operator.get(f"{POLICIES}{policy.pk}/change/").content.decode()
    assert "No labelled records in the last 7 days yet." in page and 'aria-label="routing curve"' not in page
    assert "None yet." in page


def test_the_list_flags_drifted_policies(operator, policy):
    RoutingPolicy.objects.filter(pk=policy.pk).update(drift_flagged_at=timezone.now(), drift_detail="scores shifted")
    flagged = operator.get(POLICIES, {"drift_flagged_at__isempty": "0"}).content.decode()
    assert "lid-176" in flagged
    stable = operator.get(POLICIES, {"drift_flagged_at__isempty": "1"}).content.decode()
    assert "0 routing policies" in stable


def test_people_who_are_not_staff_are_sent_to_the_login(client, policy):
    page = f"{POLICIES}{policy.pk}/change/"
    anonymous = client.get(page)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    client.force_login(get_user_model().objects.create_user("mallory", "", "a-long-password-1"))
    for response in (client.get(page), client.get(CHANGES),
                     client.post(POLICIES, {"action": "lock", "_selected_action": [policy.pk]}),
                     client.post(page, form_data(policy, confidence_floor=0.9))):
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    policy.refresh_from_db()
    assert (policy.locked, policy.confidence_floor) == (False, 0.2) and ThresholdChange.objects.count() == 0


def test_lock_and_unlock_actions(operator, policy, alice):
    other = RoutingPolicy.objects.create(tenant=alice.tenant, task="classification", candidates=[])
    response = operator.post(POLICIES, {"action": "lock", "_selected_action": [policy.pk, other.pk]}, follow=True)
    assert messages_of(response) == ["2 policies locked."]
    assert list(RoutingPolicy.objects.order_by("pk").values_list("locked", flat=True)) == [True, True]
    policy.refresh_from_db()
    assert tuning.tune(policy).reason.endswith("locked by an operator.")
    response = operator.post(POLICIES, {"action": "unlock", "_selected_action": [other.pk]}, follow=True)
    assert messages_of(response) == ["1 policies unlocked."]
    assert list(RoutingPolicy.objects.order_by("pk").values_list("locked", flat=True)) == [True, False]


def test_tune_now_runs_the_tuner_and_says_what_it_decided(operator, policy):
    labelled(policy)
    response = operator.post(POLICIES, {"action": "tune_now", "_selected_action": [policy.pk]}, follow=True)
    change = ThresholdChange.objects.get()
    assert change.decided_by == "tuner" and change.changed
    assert messages_of(response) == [f"language_id (alpha): 0.200 → {change.new:.3f}. {change.reason}"]


def test_editing_the_floor_records_an_operator_change_with_the_admins_name(operator, policy):
    response = operator.post(f"{POLICIES}{policy.pk}/change/", form_data(policy, confidence_floor=0.65, quality_target=0.9))
    assert response.status_code == 302, response.content.decode()[:2000]
    change = ThresholdChange.objects.get()
    assert (change.decided_by, change.actor, change.old, change.new) == ("operator", "ops-anna", 0.2, 0.65)
    assert change.reason == "Set by ops-anna in the admin."
    policy.refresh_from_db()
    assert (policy.confidence_floor, policy.quality_target) == (0.65, 0.9)


def test_editing_other_fields_records_no_floor_change(operator, policy):
    response = operator.post(f"{POLICIES}{policy.pk}/change/", form_data(policy, quality_target=0.9))
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.confidence_floor, policy.quality_target) == (0.2, 0.9)
    assert ThresholdChange.objects.count() == 0


def test_an_out_of_range_floor_is_refused_by_the_form(operator, policy):
    response = operator.post(f"{POLICIES}{policy.pk}/change/", form_data(policy, confidence_floor=1.5))
    assert response.status_code == 200 and "confidence_floor" in response.context["adminform"].form.errors
    policy.refresh_from_db()
    assert policy.confidence_floor == 0.2 and ThresholdChange.objects.count() == 0


def test_rolling_back_one_decision_restores_the_floor_before_it(operator, policy):
    first = tuning.set_floor(policy, 0.4, actor="ops")
    tuning.set_floor(policy, 0.7, actor="ops")
    response = operator.post(CHANGES, {"action": "roll_back", "_selected_action": [first.pk]}, follow=True)
    assert messages_of(response) == ["language_id (alpha): 0.700 → 0.200."]
    back = ThresholdChange.objects.order_by("-created_at").first()
    assert (back.decided_by, back.actor, back.new, back.rolled_back_to_id) == ("rollback", "ops-anna", 0.2, first.pk)
    policy.refresh_from_db()
    assert policy.confidence_floor == 0.2


def test_rolling_back_two_decisions_at_once_is_refused_and_changes_nothing(operator, policy):
    first = tuning.set_floor(policy, 0.4, actor="ops")
    second = tuning.set_floor(policy, 0.7, actor="ops")
    response = operator.post(CHANGES, {"action": "roll_back", "_selected_action": [first.pk, second.pk]}, follow=True)
    assert messages_of(response) == ["Choose one decision to roll back to before."]
    assert [m.level_tag for m in response.context["messages"]] == ["error"]
    assert ThresholdChange.objects.count() == 2
    policy.refresh_from_db()
    assert policy.confidence_floor == 0.7


def test_decisions_cannot_be_added_changed_or_deleted(operator, policy):
    change = tuning.set_floor(policy, 0.4, actor="ops", reason="kept for the record")
    assert operator.get(f"{CHANGES}add/").status_code == 403
    view = operator.get(f"{CHANGES}{change.pk}/change/")
    assert view.status_code == 200 and "kept for the record" in view.content.decode()  # view only
    assert 'name="_save"' not in view.content.decode()
    assert operator.post(f"{CHANGES}{change.pk}/change/", {"new": "0.9", "reason": "rewritten"}).status_code == 403
    assert operator.get(f"{CHANGES}{change.pk}/delete/").status_code == 403
    assert operator.post(f"{CHANGES}{change.pk}/delete/", {"post": "yes"}).status_code == 403
    assert "delete_selected" not in operator.get(CHANGES).content.decode()
    change.refresh_from_db()
    assert (change.new, change.reason) == (0.4, "kept for the record")


def test_mark_good_and_mark_bad_create_operator_signals(operator, policy):
    good, bad, *_ = labelled(policy, n=3)
    response = operator.post(RECORDS, {"action": "mark_good", "_selected_action": [str(good.pk), str(bad.pk)]}, follow=True)
    assert messages_of(response) == ["2 records marked good."]
    response = operator.post(RECORDS, {"action": "mark_bad", "_selected_action": [str(bad.pk)]}, follow=True)
    assert messages_of(response) == ["1 records marked bad."]
    reviews = QualitySignal.objects.filter(source=QualitySignal.Source.OPERATOR)
    assert sorted((s.record_id == good.pk, s.agreement, s.created_by) for s in reviews) == [
        (False, 0.0, "ops-anna"), (True, 1.0, "ops-anna")]  # one review per record: the second replaced the first
    assert QualitySignal.objects.filter(source=QualitySignal.Source.SHADOW).count() == 3  # the others stay


def test_learned_routers_and_signals_are_listed_read_only(operator, policy):
    [record] = labelled(policy, n=1)
    router = LearnedRouter.objects.create(policy=policy, version=1, weights={"secret": "arrays"}, trained_on=120,
                                          held_out=40, apgr=0.81, baseline_apgr=0.74, accepted=True, reason="better")
    assert "0.81" in operator.get("/admin/routing/learnedrouter/").content.decode()
    page = operator.get(f"/admin/routing/learnedrouter/{router.pk}/change/")
    assert page.status_code == 200 and "arrays" not in page.content.decode()
    assert operator.get("/admin/routing/learnedrouter/add/").status_code == 403
    assert operator.get("/admin/routing/qualitysignal/", {"source__exact": "shadow"}).status_code == 200
    assert operator.get("/admin/routing/qualitysignal/add/").status_code == 403
    signal = QualitySignal.objects.get(record=record)
    assert operator.post(f"/admin/routing/qualitysignal/{signal.pk}/change/", {"agreement": "0.5"}).status_code == 403
