"""The tuner on constructed records: it picks the expected floor, respects minimum samples, its step
bound, hysteresis, locks, operators' values and rollbacks, moves toward local as a budget runs down;
the learned router trains, persists as plain arrays, reloads, and is refused when it is not better."""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Budget
from core.recent import configuration
from registry.models import ModelSpec
from routing import tuning
from routing.models import InferenceRecord, LearnedRouter, QualitySignal, RoutingPolicy, ThresholdChange
from routing.router import learned_weights, policy_for


@pytest.fixture
def lid_policy(alice, starter) -> RoutingPolicy:
    ModelSpec.objects.create(slug="teacher", display_name="teacher", task="language_id", backend="openai",
                             source_kind="provider", source="gpt-teacher", tier="premium")
    return RoutingPolicy.objects.create(
        tenant=alice.tenant, task="language_id", candidates=["lid-176", "teacher"], confidence_floor=0.2,
        quality_target=0.95, shadow_rate=0.5, tune_min_samples=50, tune_max_step=1.0, tune_hysteresis=0.0,
    )


def labelled(policy, examples, *, source=QualitySignal.Source.SHADOW, teacher_cost="0.001", hours_ago=1):
    """Local answers of `policy` with their quality labels: examples are (confidence, agreement[, features])."""
    created = timezone.now() - timedelta(hours=hours_ago)
    teacher = InferenceRecord.objects.create(
        tenant_id=policy.tenant_id, task=policy.task, model_slug="teacher", tier="premium", status="ok",
        purpose=InferenceRecord.Purpose.EVALUATION, cost=Decimal(teacher_cost), policy=policy, created_at=created,
    )
    records = InferenceRecord.objects.bulk_create([
        InferenceRecord(tenant_id=policy.tenant_id, task=policy.task, model_slug="lid-176", tier="local", status="ok",
                        policy=policy, floor=policy.confidence_floor, confidence=example[0], score=example[0],
                        features=example[2] if len(example) > 2 else None, created_at=created)
        for example in examples
    ])
    QualitySignal.objects.bulk_create([
        QualitySignal(record=record, source=source, agreement=example[1], teacher=teacher)
        for record, example in zip(records, examples)
    ])
    return records


def separated(n=400, *, seed=0, wrong_share=0.25):
    """Wrong answers score 0.20–0.55, right ones 0.65–0.95: a floor near 0.55 escalates every wrong one."""
    rng = random.Random(seed)
    return [(rng.uniform(0.20, 0.55), 0.0) if rng.random() < wrong_share else (rng.uniform(0.65, 0.95), 1.0) for _ in range(n)]


def test_the_tuner_picks_the_floor_that_serves_most_locally_at_the_quality_target(lid_policy):
    examples = separated()
    labelled(lid_policy, examples)
    change = tuning.tune(lid_policy)
    wrong = sorted(score for score, agreed in examples if not agreed)
    # The largest local share at PGR ≥ 0.95: at least 95% of the wrong answers escalate, no right one does.
    assert wrong[int(len(wrong) * 0.95) - 1] < change.new <= wrong[-1] + 1e-9
    assert change.decided_by == "tuner" and change.old == 0.2 and change.changed
    lid_policy.refresh_from_db()
    assert lid_policy.confidence_floor == change.new
    evidence = change.evidence
    assert evidence["samples"] == len(examples) and evidence["by_source"] == {"shadow": len(examples)}
    assert evidence["projected"]["pgr"] >= 0.95 and evidence["projected"]["premium_share"] < 0.3
    assert evidence["curve"] and evidence["apgr"] > 0.85  # perfect routing of a 25% wrong share: 1 − 0.25/2
    assert "0.95" in change.reason or "target" in change.reason


def test_a_new_floor_reaches_the_router_of_this_process_at_once(alice, lid_policy):
    assert policy_for(tenant=alice.tenant, task="language_id").confidence_floor == 0.2
    labelled(lid_policy, separated())
    change = tuning.tune(lid_policy)
    assert policy_for(tenant=alice.tenant, task="language_id").confidence_floor == change.new


def test_too_few_labelled_records_keep_the_floor_and_say_so(lid_policy):
    labelled(lid_policy, separated(n=30))
    change = tuning.tune(lid_policy)
    assert not change.changed and change.new == 0.2 and "30" in change.reason
    assert ThresholdChange.objects.filter(policy=lid_policy).count() == 1  # the decision is recorded all the same


def test_one_run_moves_the_floor_at_most_one_step(lid_policy):
    RoutingPolicy.objects.filter(pk=lid_policy.pk).update(tune_max_step=0.1)
    lid_policy.refresh_from_db()
    labelled(lid_policy, separated())
    change = tuning.tune(lid_policy)
    assert change.new == pytest.approx(0.3)


def test_a_move_smaller_than_the_hysteresis_is_not_made(lid_policy):
    examples = separated()
    labelled(lid_policy, examples)
    best = tuning.tune(lid_policy).new
    # A little above the best floor: it meets the target too, with a touch more premium: not worth a move.
    RoutingPolicy.objects.filter(pk=lid_policy.pk).update(confidence_floor=best + 0.01, tune_hysteresis=0.05)
    lid_policy.refresh_from_db()
    change = tuning.tune(lid_policy)
    assert not change.changed and change.new == pytest.approx(best + 0.01) and "hysteresis" in change.reason


def test_hysteresis_never_keeps_a_floor_that_misses_the_target(lid_policy):
    examples = separated()
    labelled(lid_policy, examples)
    best = tuning.tune(lid_policy).new
    wrong = sorted(score for score, agreed in examples if not agreed)
    below = wrong[int(len(wrong) * 0.9)]  # a tenth of the wrong answers would stay local: PGR about 0.9
    RoutingPolicy.objects.filter(pk=lid_policy.pk).update(confidence_floor=below, tune_hysteresis=0.2)
    lid_policy.refresh_from_db()
    change = tuning.tune(lid_policy)
    assert change.changed and change.new == pytest.approx(best) and "misses the target" in change.reason


def test_a_locked_policy_keeps_its_floor_and_the_decision_says_why(lid_policy):
    labelled(lid_policy, separated())
    RoutingPolicy.objects.filter(pk=lid_policy.pk).update(locked=True)
    lid_policy.refresh_from_db()
    change = tuning.tune(lid_policy)
    assert not change.changed and "locked" in change.reason
    assert tuning.tune_all() == []  # the schedule skips it


def test_an_operator_value_is_recorded_and_any_decision_can_be_rolled_back(lid_policy):
    labelled(lid_policy, separated())
    tuned = tuning.tune(lid_policy)
    manual = tuning.set_floor(lid_policy, 0.4, actor="ops", reason="incident 42")
    assert (manual.decided_by, manual.actor, manual.old, manual.new, manual.reason) == ("operator", "ops", tuned.new, 0.4, "incident 42")
    back = tuning.roll_back(tuned, actor="ops")
    assert (back.decided_by, back.new, back.rolled_back_to_id) == ("rollback", 0.2, tuned.pk)
    lid_policy.refresh_from_db()
    assert lid_policy.confidence_floor == 0.2
    with pytest.raises(ValueError):
        tuning.set_floor(lid_policy, 1.5, actor="ops")


def test_budget_pressure_moves_the_floor_toward_local(alice, lid_policy):
    examples = separated(wrong_share=0.4)
    labelled(lid_policy, examples, teacher_cost="0.01")
    free = tuning.tune(lid_policy)
    RoutingPolicy.objects.filter(pk=lid_policy.pk).update(confidence_floor=0.2)
    lid_policy.refresh_from_db()
    # Little money left for the rest of the month at this pace: about a tenth of answers may go premium.
    budget = Budget.objects.create(tenant=alice.tenant, limit=Decimal("100"))
    days_left = (budget.period_end - timezone.now()).total_seconds() / 86400
    expected = len(examples) / lid_policy.tune_window_days * days_left
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("100") - Decimal(str(round(expected * 0.01 * 0.1, 6))))
    pressed = tuning.tune(lid_policy)
    assert pressed.new < free.new
    assert pressed.evidence["budget"]["max_premium_share"] == pytest.approx(0.1, abs=0.02)
    assert pressed.evidence["projected"]["premium_share"] <= 0.1 + 0.02


def test_escalation_pairs_alone_never_speak_for_answers_above_the_floor(lid_policy):
    # Only answers below the floor have escalation pairs; labels from people alone are left out.
    labelled(lid_policy, [(0.1, 0.0)] * 60, source=QualitySignal.Source.ESCALATION)
    labelled(lid_policy, [(0.9, 0.0)] * 10, source=QualitySignal.Source.FEEDBACK)
    window = tuning.labelled_window(lid_policy, days=7)
    assert window.by_source == {"escalation": 60} and window.unused == 10
    assert all(item.score == 0.1 for item in window.items)


# --- the learned router ------------------------------------------------------------------------
def miscalibrated(n=600, seed=1):
    """Language "xx" always claims 0.99 but agrees a third of the time; the others are calibrated."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.3:
            top1, agreed, label = 0.99, float(rng.random() < 0.3), "xx"
        else:
            top1 = rng.uniform(0.3, 1.0)
            agreed, label = float(rng.random() < top1), rng.choice(["en", "fr", "de"])
        rows.append((top1, agreed, {"top1": top1, "margin": None, "length": 20, "words": 3, "script": "Latin", "label": label}))
    return rows


def test_the_learned_router_trains_persists_as_plain_arrays_reloads_and_takes_over(lid_policy):
    labelled(lid_policy, miscalibrated())
    router = tuning.fit_router(lid_policy)
    assert router is not None and router.accepted and router.apgr > router.baseline_apgr
    assert "put in use" in router.reason
    stored = LearnedRouter.objects.get(pk=router.pk)
    assert json.loads(json.dumps(stored.weights)) == stored.weights  # JSON all the way down: no pickle
    lid_policy.refresh_from_db()
    assert lid_policy.learned_router_id == router.pk
    configuration.forget()
    weights = learned_weights(lid_policy)
    row = {"top1": 0.99, "label": "xx", "length": 20, "words": 3, "script": "Latin"}
    assert weights.predict_one(row) < 0.5 < weights.predict_one(row | {"label": "en"})
    switch = ThresholdChange.objects.filter(policy=lid_policy).latest("created_at")
    assert "Learned router v1 put in use" in switch.reason


def test_a_learned_router_that_is_not_better_is_refused(lid_policy):
    rng = random.Random(3)
    # Confidence already separates right from wrong perfectly: no router can do better.
    rows = []
    for _ in range(400):
        top1 = rng.uniform(0.0, 1.0)
        rows.append((top1, float(top1 > 0.5), {"top1": top1, "length": 20, "words": 3, "script": "Latin", "label": "en"}))
    labelled(lid_policy, rows)
    router = tuning.fit_router(lid_policy)
    assert router is not None and not router.accepted and "refused" in router.reason
    lid_policy.refresh_from_db()
    assert lid_policy.learned_router_id is None


def test_too_few_labelled_records_fit_no_router(lid_policy):
    labelled(lid_policy, miscalibrated(n=20))
    assert tuning.fit_router(lid_policy) is None and not LearnedRouter.objects.exists()


def test_a_chat_router_trained_on_prompt_embeddings_scores_a_request_with_its_prompts_embedding(api, alice, chat_model):
    from routing import learned
    from routing.router import prompt_embedding
    from tests.routing.conftest import post, records
    from tests.routing.test_premium_routing import chat_policy

    rng = random.Random(5)
    rows, agreed = [], []
    for _ in range(120):
        vector = [rng.gauss(0, 1) for _ in range(384)]
        rows.append({"top1": rng.random(), "length": 20, "words": 4, "script": "Latin", "label": None, "embedding": vector})
        agreed.append(vector[0] > 0)  # only the embedding tells
    weights = learned.fit(rows, agreed)
    policy = chat_policy(alice.tenant, "tiny-chat", threshold=0.99)
    router = LearnedRouter.objects.create(policy=policy, version=1, weights=weights.to_json(), trained_on=120, held_out=0,
                                          apgr=1.0, baseline_apgr=0.5, accepted=True)
    RoutingPolicy.objects.filter(pk=policy.pk).update(learned_router=router, confidence_floor=0.0)
    configuration.forget()
    post(api, "/v1/chat/completions", {"messages": [{"role": "user", "content": "capital of France?"}], "max_tokens": 8},
         alice, HTTP_X_REQUEST_ID="chat-embedded")
    [record] = records("chat-embedded")
    expected = weights.predict_one(record.features | {"embedding": prompt_embedding("capital of France?")})
    assert record.score == pytest.approx(expected) and record.score != pytest.approx(weights.predict_one(record.features))
    assert "embedding" not in record.features


def test_a_router_is_refitted_when_as_many_new_labels_arrived_as_it_was_fitted_on(lid_policy):
    labelled(lid_policy, miscalibrated(n=200), hours_ago=3)
    first = tuning.fit_router(lid_policy)
    assert first is not None and not tuning.router_due(lid_policy)  # fitted just now, nothing new
    labelled(lid_policy, miscalibrated(n=100, seed=9), hours_ago=0)
    assert not tuning.router_due(lid_policy)  # fewer new labels than it was fitted on
    labelled(lid_policy, miscalibrated(n=120, seed=10), hours_ago=0)
    assert tuning.router_due(lid_policy)


def test_a_router_that_traffic_left_behind_gives_way_to_confidence(lid_policy, monkeypatch):
    from routing import learned

    labelled(lid_policy, miscalibrated(), hours_ago=30)
    adopted = tuning.fit_router(lid_policy, days=2)
    assert adopted.accepted
    # Now "xx" answers are right whenever sure, and confidence separates right from wrong perfectly; the
    # router in use still distrusts "xx". A new fit that cannot do better (forced here) is refused…
    rng = random.Random(11)
    rows = []
    for n in range(300):
        top1 = rng.uniform(0.0, 1.0)
        label = "xx" if n % 2 else "en"  # the router in use ranks every "xx" below every "en": out of order now
        rows.append((top1, float(top1 > 0.5), {"top1": top1, "length": 20, "words": 3, "script": "Latin", "label": label}))
    labelled(lid_policy, rows, hours_ago=1)
    real_fit = learned.fit
    monkeypatch.setattr(learned, "fit", lambda features, agreed, **kw: real_fit(features, [1 - a for a in agreed], **kw))
    refitted = tuning.fit_router(lid_policy, days=0.5)
    assert not refitted.accepted and "back to confidence" in refitted.reason
    # … and routing goes back to confidence, the floor re-set to keep the premium share.
    lid_policy.refresh_from_db()
    assert lid_policy.learned_router_id is None
    assert "Routing by confidence again" in ThresholdChange.objects.filter(policy=lid_policy).latest("created_at").reason


def test_a_shift_within_the_window_makes_the_tuner_look_at_the_last_hours_only(lid_policy):
    labelled(lid_policy, separated(seed=1), hours_ago=12)  # the window's older traffic: sure answers mostly
    rng = random.Random(2)
    # The last hours: short, unsure texts — confidences far lower, half of them wrong.
    labelled(lid_policy, [(rng.uniform(0.1, 0.5), float(rng.random() < 0.5)) for _ in range(150)], hours_ago=1)
    change = tuning.tune(lid_policy)
    shift = change.evidence["recent_shift"]
    assert shift["shifted"] and shift["psi"] > shift["limit"] and shift["recent"] == 150
    since, until = (datetime.fromisoformat(change.evidence["window"][k]) for k in ("since", "until"))
    assert until - since == timedelta(hours=tuning.RECENT_HOURS)
    assert change.evidence["samples"] == 150  # only the recent labels speak


def test_a_stable_window_is_tuned_whole(lid_policy):
    labelled(lid_policy, separated(seed=1), hours_ago=12)
    labelled(lid_policy, separated(seed=2), hours_ago=1)
    change = tuning.tune(lid_policy)
    assert not change.evidence["recent_shift"]["shifted"] and change.evidence["samples"] == 800


def test_a_moderate_shift_over_enough_answers_narrows_the_window_too(lid_policy):
    """The drift alert waits for PSI 0.25; the tuner acts on less once sampling cannot explain it."""
    rng = random.Random(3)
    labelled(lid_policy, [(rng.uniform(0.3, 1.0), 1.0) for _ in range(2000)], hours_ago=12)
    # A quarter of the last hours' answers now sit low in the same range: no bin empties, PSI ~0.15.
    labelled(lid_policy, [(rng.uniform(0.3, 0.5) if rng.random() < 0.25 else rng.uniform(0.3, 1.0), 1.0)
                          for _ in range(400)], hours_ago=1)
    shift = tuning.tune(lid_policy).evidence["recent_shift"]
    assert 0.1 < shift["psi"] < 0.25 and shift["limit"] < shift["psi"] and shift["shifted"]
