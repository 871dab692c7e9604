"""The daily drift check on constructed records: a stable week is left alone; shifted routing scores,
falling agreement with premium, rising errors or latency flag the policy, raise one drift alert a day
for its tenant (delivered like a budget alert), and make the tuner look at recent records only."""
from __future__ import annotations

import hashlib
import hmac
import json
import random
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.core import mail

from billing import alerts
from billing.models import Alert
from routing import drift, tuning
from routing.models import InferenceRecord, QualitySignal, RoutingPolicy
from tests.billing.test_alerts import receiver  # noqa: F401  (the loopback webhook receiver)
from tests.billing.test_budgets import budget_for

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=dt_timezone.utc)


@pytest.fixture(autouse=True)
def fresh_memo():
    alerts._raised.clear()
    yield
    alerts._raised.clear()


@pytest.fixture
def policy(alice) -> RoutingPolicy:
    return RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-176", "teacher"],
                                        confidence_floor=0.4, shadow_rate=0.5)


def answers(policy, scores, *, tenant=None, start, end, status="ok", slug="lid-176", latency_ms=None, agreements=None):
    """Local answers of `policy` spread evenly over [start, end), one per score (None: no score);
    with `agreements`, each also gets its shadow label."""
    step = (end - start) / max(len(scores), 1)
    records = InferenceRecord.objects.bulk_create([
        InferenceRecord(tenant=tenant or policy.tenant, task=policy.task, model_slug=slug, tier="local", status=status,
                        policy=policy, floor=policy.confidence_floor, confidence=score, score=score,
                        latency_ms=latency_ms, created_at=start + step * i)
        for i, score in enumerate(scores)
    ])
    if agreements is not None:
        QualitySignal.objects.bulk_create([
            QualitySignal(record=record, source=QualitySignal.Source.SHADOW, agreement=agreement, created_at=record.created_at)
            for record, agreement in zip(records, agreements)
        ])
    return records


def reference(policy, scores, **kwargs):
    """The week before the last day."""
    return answers(policy, scores, start=NOW - timedelta(days=8), end=NOW - timedelta(days=1, minutes=1), **kwargs)


def recent(policy, scores, **kwargs):
    """The last day."""
    return answers(policy, scores, start=NOW - timedelta(days=1), end=NOW - timedelta(minutes=1), **kwargs)


def usual(n, *, seed):
    """The scores of ordinary traffic: mostly confident."""
    rng = random.Random(seed)
    return [rng.uniform(0.3, 0.98) for _ in range(n)]


def unusual(n, *, seed):
    """Traffic the model has not seen: low scores."""
    rng = random.Random(seed)
    return [rng.uniform(0.05, 0.45) for _ in range(n)]


def shifted_day(policy):
    reference(policy, usual(400, seed=1))
    recent(policy, unusual(120, seed=2))


def test_a_stable_distribution_is_not_flagged(policy):
    reference(policy, usual(400, seed=1))
    recent(policy, usual(150, seed=2))
    report = drift.check(policy, now=NOW)
    assert report.psi is not None and report.psi < 0.25
    assert not report.drifted and report.message() == "stable"
    policy.refresh_from_db()
    assert (policy.drift_flagged_at, policy.drift_detail) == (None, "")
    assert Alert.objects.count() == 0


def test_a_shifted_score_distribution_is_flagged_and_raises_one_drift_alert_a_day(policy):
    shifted_day(policy)
    report = drift.check(policy, now=NOW)
    assert report.drifted and report.psi > 0.25
    assert f"PSI {report.psi:.2f}" in report.message()
    policy.refresh_from_db()
    assert policy.drift_flagged_at == NOW and "routing scores shifted (PSI" in policy.drift_detail
    drift.check(policy, now=NOW + timedelta(hours=3))  # the same day again
    alerts._raised.clear()
    drift.check_all(now=NOW + timedelta(hours=5))  # the schedule, in another process
    alert = Alert.objects.get()
    assert (alert.kind, alert.tenant_id, alert.subject) == (Alert.Kind.DRIFT, policy.tenant_id, "language_id (alpha)")
    assert alert.period_start == datetime(2025, 3, 10, tzinfo=dt_timezone.utc) and "PSI" in alert.message
    assert alert.budget is None  # no budget: nowhere to deliver it but the admin


def test_the_drift_alert_goes_to_the_tenants_webhook_signed(alice, policy, receiver):  # noqa: F811
    budget = budget_for(alice.tenant, "1.0")
    secret = alerts.set_webhook(budget, receiver.url)
    budget.save()
    shifted_day(policy)
    drift.check(policy, now=NOW)
    alert = Alert.objects.get(kind=Alert.Kind.DRIFT)
    assert alert.budget_id == budget.pk
    assert alerts.deliver(alert.pk) == {"email": "skipped", "webhook": "sent"}
    [(headers, body)] = receiver.received
    expected = hmac.new(secret.encode(), headers["x-modelgate-timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-modelgate-signature"] == f"v1={expected}"
    payload = json.loads(body)
    assert (payload["type"], payload["tenant"], payload["policy"], payload["day"]) == (
        "routing.drift", "alpha", "language_id (alpha)", "2025-03-10")
    assert "PSI" in payload["message"]
    # A receiver dispatches on the event header as well as the body: both must say what happened.
    assert headers["x-modelgate-event"] == "routing.drift"


def test_the_drift_alert_is_emailed_when_email_is_configured(alice, policy, settings):
    settings.MODELGATE_ALERT_EMAILS = True
    budget_for(alice.tenant, "1.0", alert_email="ops@alpha.example")
    shifted_day(policy)
    drift.check(policy, now=NOW)
    assert alerts.deliver(Alert.objects.get().pk) == {"email": "sent", "webhook": "skipped"}
    [email] = mail.outbox
    assert email.subject == "Modelgate: routing of language_id (alpha) drifted" and "PSI" in email.body
    assert email.to == ["ops@alpha.example"]


@pytest.mark.parametrize("reference_agreement, recent_agreement", [(0.9, 0.75), (0.9, 0.8)],
                         ids=["clear-drop", "drop-of-exactly-0.1"])
def test_an_agreement_drop_of_a_tenth_or_more_flags(policy, reference_agreement, recent_agreement):
    def labels(n, mean):
        agreed = round(n * mean)
        return [1.0] * agreed + [0.0] * (n - agreed)

    reference(policy, usual(400, seed=1), agreements=labels(40, reference_agreement))
    recent(policy, usual(150, seed=2), agreements=labels(40, recent_agreement))
    report = drift.check(policy, now=NOW)
    assert report.agreement == (pytest.approx(reference_agreement), pytest.approx(recent_agreement))
    assert report.psi < 0.25
    assert report.findings == [f"agreement with premium fell from {reference_agreement:.2f} to {recent_agreement:.2f}"]
    policy.refresh_from_db()
    assert policy.drift_flagged_at == NOW


def test_a_small_agreement_drop_or_too_few_labels_does_not_flag(policy):
    reference(policy, usual(400, seed=1), agreements=[1.0] * 36 + [0.0] * 4)  # 0.90
    recent(policy, usual(150, seed=2), agreements=[1.0] * 34 + [0.0] * 6)  # 0.85
    report = drift.check(policy, now=NOW)
    assert report.agreement == (pytest.approx(0.9), pytest.approx(0.85)) and not report.drifted
    InferenceRecord.objects.filter(created_at__gte=NOW - timedelta(days=1)).delete()
    recent(policy, usual(150, seed=2), agreements=[0.0] * 10)  # all wrong, but only ten labels
    report = drift.check(policy, now=NOW)
    assert report.agreement == (pytest.approx(0.9), None) and not report.drifted


def test_an_error_rate_rise_flags(policy):
    reference(policy, usual(300, seed=1))
    scores = usual(120, seed=2)
    recent(policy, scores[:100])
    recent(policy, [None] * 12, status="error")
    report = drift.check(policy, now=NOW)
    assert report.models["lid-176"]["recent"]["error_rate"] == pytest.approx(12 / 112)
    assert report.findings == ["lid-176: error rate 0.0% → 10.7%"]
    policy.refresh_from_db()
    assert policy.drift_detail == "lid-176: error rate 0.0% → 10.7%"
    assert Alert.objects.get().message == "lid-176: error rate 0.0% → 10.7%"


def test_a_slower_model_flags(policy):
    reference(policy, usual(300, seed=1), latency_ms=40.0)
    recent(policy, usual(100, seed=2), latency_ms=90.0)
    report = drift.check(policy, now=NOW)
    assert report.findings == ["lid-176: p50 latency 40 → 90 ms"]


def test_too_few_records_flag_nothing(policy):
    reference(policy, usual(400, seed=1), latency_ms=40.0)
    recent(policy, unusual(40, seed=2), latency_ms=400.0)
    recent(policy, [None] * 9, status="error")
    report = drift.check(policy, now=NOW)
    assert report.psi is None and not report.drifted
    policy.refresh_from_db()
    assert policy.drift_flagged_at is None and Alert.objects.count() == 0


def test_a_global_policy_is_flagged_without_an_alert(alice):
    policy = RoutingPolicy.objects.create(task="language_id", candidates=["lid-176"])
    reference(policy, usual(400, seed=1), tenant=alice.tenant)
    recent(policy, unusual(120, seed=2), tenant=alice.tenant)
    report = drift.check(policy, now=NOW)
    assert report.drifted
    policy.refresh_from_db()
    assert policy.drift_flagged_at == NOW and "PSI" in policy.drift_detail
    assert Alert.objects.count() == 0


def test_a_later_stable_check_clears_the_flag(policy):
    shifted_day(policy)
    assert drift.check(policy, now=NOW).drifted
    # The unusual traffic was a one-off: the last day looks like the week before again.
    InferenceRecord.objects.filter(created_at__gte=NOW - timedelta(days=1)).delete()
    recent(policy, usual(150, seed=2))
    [report] = drift.check_all(now=NOW + timedelta(hours=1))  # reads the flag from the database
    assert not report.drifted
    policy.refresh_from_db()
    assert (policy.drift_flagged_at, policy.drift_detail) == (None, "")
    assert Alert.objects.count() == 1  # the alert of the drift stays on record


def test_the_tuner_after_a_drift_looks_at_the_recent_records_only(policy):
    rng = random.Random(3)
    old = answers(policy, usual(200, seed=4), start=NOW - timedelta(days=6), end=NOW - timedelta(days=2),
                  agreements=[float(rng.random() < 0.8) for _ in range(200)])
    shifted_day(policy)
    new = list(InferenceRecord.objects.filter(created_at__gte=NOW - timedelta(days=1)))
    QualitySignal.objects.bulk_create([QualitySignal(record=record, source=QualitySignal.Source.SHADOW, agreement=1.0)
                                       for record in new])

    calm = tuning.tune(policy, now=NOW)
    assert calm.evidence["drift_window"] is False and calm.evidence["samples"] == len(old) + len(new)
    assert drift.check(policy, now=NOW).drifted
    after = tuning.tune(policy, now=NOW)
    evidence = after.evidence
    assert evidence["drift_window"] is True
    since, until = (datetime.fromisoformat(evidence["window"][end]) for end in ("since", "until"))
    assert until == NOW and until - since == timedelta(days=policy.tune_window_days / 4)
    assert evidence["samples"] == len(new)  # the labels of two days ago and older are left out
