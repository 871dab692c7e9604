"""POST /v1/feedback as a quality signal: a tenant's rating of an answer becomes the feedback signal
of the attempt that answered, replaced when rated again; nothing is written for another tenant's
request or a score outside -1…1."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from routing.models import InferenceRecord, QualitySignal, RoutingPolicy
from tests.routing.conftest import post


@pytest.fixture
def answered(alice) -> InferenceRecord:
    """A request whose local attempt escalated and whose premium attempt answered."""
    policy = RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-176", "teacher"])
    created = timezone.now() - timedelta(minutes=5)
    local = InferenceRecord.objects.create(
        request_id="req-feedback-1", tenant=alice.tenant, api_key=alice.key, task="language_id", model_slug="lid-176",
        tier="local", status="escalated", policy=policy, confidence=0.2, score=0.2, created_at=created,
    )
    return InferenceRecord.objects.create(
        request_id="req-feedback-1", tenant=alice.tenant, api_key=alice.key, task="language_id", model_slug="teacher",
        tier="premium", status="ok", policy=policy, escalated_from=local, created_at=created + timedelta(seconds=1),
    )


def feedback(api, caller, **body):
    return post(api, "/v1/feedback", {"request_id": "req-feedback-1", **body}, caller)


@pytest.mark.parametrize("score, agreement", [(1, 1.0), (0, 0.5), (-1, 0.0)])
def test_feedback_creates_a_feedback_signal_on_the_answered_record(api, alice, answered, score, agreement):
    response = feedback(api, alice, score=score, comment="checked by hand")
    assert response.status_code == 200
    assert response.json() == {"inference_id": str(answered.pk), "request_id": "req-feedback-1", "score": score}
    signal = QualitySignal.objects.get()
    assert (signal.record_id, signal.source, signal.agreement, signal.detail) == (
        answered.pk, QualitySignal.Source.FEEDBACK, agreement, "checked by hand")
    assert signal.teacher_id is None and signal.created_by == ""
    answered.refresh_from_db()
    assert (answered.feedback_score, answered.feedback_comment) == (score, "checked by hand") and answered.feedback_at


def test_feedback_given_again_replaces_the_signal(api, alice, answered):
    assert feedback(api, alice, score=1, comment="looks right").status_code == 200
    first = QualitySignal.objects.get()
    assert feedback(api, alice, score=-1, comment="no, it was Catalan").status_code == 200
    signal = QualitySignal.objects.get()
    assert signal.pk == first.pk and (signal.agreement, signal.detail) == (0.0, "no, it was Catalan")
    assert signal.created_at >= first.created_at
    answered.refresh_from_db()
    assert (answered.feedback_score, answered.feedback_comment) == (-1, "no, it was Catalan")


def test_feedback_leaves_the_other_sources_alone(api, alice, answered):
    QualitySignal.objects.create(record=answered, source=QualitySignal.Source.OPERATOR, agreement=1.0, created_by="ops")
    assert feedback(api, alice, score=-1).status_code == 200
    assert sorted(QualitySignal.objects.values_list("source", "agreement")) == [("feedback", 0.0), ("operator", 1.0)]


def test_feedback_on_another_tenants_request_is_not_found_and_writes_nothing(api, bob, answered):
    response = feedback(api, bob, score=1)
    missing = post(api, "/v1/feedback", {"request_id": "req-never-seen", "score": 1}, bob)
    assert response.status_code == missing.status_code == 404
    assert response.json()["error"]["code"] == missing.json()["error"]["code"]
    assert QualitySignal.objects.count() == 0
    assert InferenceRecord.objects.filter(feedback_at__isnull=False).count() == 0


def test_a_score_outside_minus_one_to_one_is_refused_and_writes_nothing(api, alice, answered):
    response = feedback(api, alice, score=2, comment="great")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "score" in error["message"]
    assert QualitySignal.objects.count() == 0
    answered.refresh_from_db()
    assert (answered.feedback_score, answered.feedback_comment, answered.feedback_at) == (None, "", None)


def test_a_request_still_pending_has_no_answer_to_rate(api, alice):
    InferenceRecord.objects.create(request_id="req-feedback-1", tenant=alice.tenant, task="language_id", model_slug="lid-176")
    assert feedback(api, alice, score=1).status_code == 404
    assert QualitySignal.objects.count() == 0


def test_feedback_needs_the_inferences_scope(api, alice_limited, answered):
    assert feedback(api, alice_limited, score=1).status_code == 403
    assert QualitySignal.objects.count() == 0


def test_feedback_on_a_sampled_answer_becomes_the_label_the_tuner_uses(api, alice):
    from routing import tuning

    policy = RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-176"], shadow_rate=0.5)
    record = InferenceRecord.objects.create(
        request_id="req-feedback-1", tenant=alice.tenant, task="language_id", model_slug="lid-176", tier="local",
        status="ok", policy=policy, confidence=0.9, score=0.9, created_at=timezone.now() - timedelta(hours=1),
    )
    QualitySignal.objects.create(record=record, source=QualitySignal.Source.SHADOW, agreement=1.0)
    assert feedback(api, alice, score=-1, comment="wrong").status_code == 200
    [example], by_source, _, _ = tuning.labelled_examples(policy, since=timezone.now() - timedelta(days=1), until=timezone.now())
    assert (example.record_id, example.agreement, example.weight) == (record.pk, 0.0, 2.0)  # people over the teacher
    assert by_source == {"feedback": 1}
