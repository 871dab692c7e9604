"""Shadow evaluation: a sampled local answer is also asked of the premium teacher in the background; the
tenant's answer, latency and budget are untouched, the teacher's call is held and settled on the
evaluation allowance (never past it), and the agreement is stored once as the local record's quality."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django_q.models import OrmQ

from billing.models import Budget, EvaluationAllowance
from routing import shadow
from routing.models import InferenceRecord, QualitySignal, RoutingPolicy
from tests.routing.conftest import post, records
from tests.routing.test_premium_routing import chat_policy, premium

FRENCH = "Le conseil municipal a voté le nouveau budget de la ville hier soir"


@pytest.fixture
def shadowed(alice, starter, fake_providers) -> RoutingPolicy:
    premium("teacher", "language_id", fake_providers)
    Budget.objects.create(tenant=alice.tenant, limit=Decimal("10"))
    return RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-176", "teacher"],
                                        confidence_floor=0.0, shadow_rate=1.0)


def queued() -> list[dict]:
    return [task.task for task in OrmQ.objects.order_by("pk")]


def run_queued() -> list[str]:
    results = []
    for task in queued():
        assert task["func"] == "routing.shadow.evaluate"
        results.append(shadow.evaluate(*task["args"]))
    OrmQ.objects.all().delete()
    return results


def answers_cost() -> Decimal:
    return sum((r.cost for r in InferenceRecord.objects.filter(purpose="answer")), Decimal("0"))


def detect(api, alice, request_id: str):
    return post(api, "/v1/detect-language", {"texts": [FRENCH]}, alice, HTTP_X_REQUEST_ID=request_id)


def test_a_sampled_answer_is_the_one_the_tenant_would_have_had_and_costs_its_budget_nothing(api, alice, shadowed, fake_providers):
    RoutingPolicy.objects.filter(pk=shadowed.pk).update(shadow_rate=0.0)
    plain = detect(api, alice, "shadow-off").json()
    RoutingPolicy.objects.filter(pk=shadowed.pk).update(shadow_rate=1.0)
    from core.recent import configuration

    configuration.forget()
    sampled = detect(api, alice, "shadow-on").json()
    assert sampled["results"] == plain["results"] and sampled["model"] == "lid-176"
    assert not fake_providers.requests_to("/v1/chat/completions")  # nothing premium while the tenant waits
    [task] = queued()
    assert task["args"][0] == str(records("shadow-on")[0].id) and task["args"][1] == "teacher"

    fake_providers.reply('{"language": "fr"}')
    assert run_queued() == ["agreement 1.000"]
    local, teacher = records("shadow-on")
    assert (teacher.purpose, teacher.status, teacher.model_slug) == ("evaluation", "ok", "teacher")
    assert teacher.cost > 0 and teacher.confidence is None
    [signal] = QualitySignal.objects.filter(record=local)
    assert (signal.source, signal.agreement, signal.teacher_id) == ("shadow", 1.0, teacher.id)
    budget = Budget.objects.get(tenant=alice.tenant)
    assert budget.spent == answers_cost() and budget.reserved == 0  # the answers' own (local) cost, nothing of the teacher's
    allowance = EvaluationAllowance.objects.get(tenant=alice.tenant)
    assert allowance.spent == teacher.cost and allowance.reserved == 0


def test_a_disagreeing_teacher_labels_the_local_answer_wrong(api, alice, shadowed, fake_providers):
    detect(api, alice, "shadow-wrong")
    fake_providers.reply('{"language": "it"}')
    assert run_queued() == ["agreement 0.000"]
    assert QualitySignal.objects.get().agreement == 0.0


def test_a_retried_task_evaluates_once(api, alice, shadowed, fake_providers):
    detect(api, alice, "shadow-twice")
    [task] = queued()
    fake_providers.reply('{"language": "fr"}')
    assert shadow.evaluate(*task["args"]) == "agreement 1.000"
    assert shadow.evaluate(*task["args"]) == "already evaluated"
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 1
    assert QualitySignal.objects.count() == 1


def test_the_allowance_is_never_exceeded(api, alice, shadowed, fake_providers, settings):
    settings.MODELGATE_EVALUATION_ALLOWANCE = Decimal("0.0001")  # room for a single teacher call's hold at most
    fake_providers.reply('{"language": "fr"}')
    for n in range(5):
        detect(api, alice, f"shadow-allowance-{n}")
    outcomes = run_queued()
    allowance = EvaluationAllowance.objects.get(tenant=alice.tenant)
    assert allowance.spent <= allowance.limit and allowance.reserved == 0
    assert outcomes.count("the evaluation allowance is used up") >= 4
    calls = len(fake_providers.requests_to("/v1/chat/completions"))
    assert calls == sum(outcome.startswith("agreement") for outcome in outcomes)
    assert Budget.objects.get(tenant=alice.tenant).spent == answers_cost()


def test_a_failing_teacher_frees_its_hold_and_labels_nothing(api, alice, shadowed, fake_providers):
    detect(api, alice, "shadow-fails")
    fake_providers.status(500, times=5)
    [outcome] = run_queued()
    assert outcome.startswith("failed")
    local, teacher = records("shadow-fails")
    assert teacher.status == "error" and teacher.purpose == "evaluation"
    assert EvaluationAllowance.objects.get(tenant=alice.tenant).reserved == 0
    assert not QualitySignal.objects.exists()


def test_an_escalated_or_premium_answer_is_not_sampled(api, alice, shadowed, fake_providers):
    RoutingPolicy.objects.filter(pk=shadowed.pk).update(confidence_floor=1.0)  # everything escalates
    from core.recent import configuration

    configuration.forget()
    fake_providers.reply('{"language": "fr"}')
    detect(api, alice, "shadow-escalated")
    assert not queued()


def test_without_a_premium_candidate_nothing_is_sampled(api, alice, starter):
    RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-176"], shadow_rate=1.0)
    detect(api, alice, "shadow-alone")
    assert not queued()


def test_a_chat_answer_is_judged_against_the_teachers(api, alice, chat_model, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    policy = chat_policy(alice.tenant, "tiny-chat", "gpt-fake", threshold=0.99)
    RoutingPolicy.objects.filter(pk=policy.pk).update(shadow_rate=1.0, confidence_floor=0.0)
    response = post(api, "/v1/chat/completions", {"messages": [{"role": "user", "content": "capital of France?"}],
                                                  "max_tokens": 8}, alice, HTTP_X_REQUEST_ID="shadow-chat")
    assert response["x-modelgate-model"] == "tiny-chat"
    fake_providers.replies("Paris is the capital of France.", json.dumps({"agreement": 0.75}))
    assert run_queued() == ["agreement 0.750"]
    local, teacher = records("shadow-chat")
    assert QualitySignal.objects.get(record=local).agreement == 0.75
    # The teacher's record carries both of its calls: the answer and the verdict.
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 2 and teacher.cost > 0


def test_the_reaper_frees_an_abandoned_evaluation_hold_on_the_allowance_not_the_budget(alice, shadowed, settings):
    from datetime import timedelta

    from django.utils import timezone

    from billing import services as billing
    from routing.tasks import reap_abandoned

    allowance = billing.evaluation_allowance(alice.tenant.pk)
    assert billing.reserve_evaluation(allowance, Decimal("0.5"))
    InferenceRecord.objects.create(tenant=alice.tenant, task="language_id", model_slug="teacher", tier="premium",
                                   purpose="evaluation", reserved_cost=Decimal("0.5"),
                                   created_at=timezone.now() - timedelta(hours=1))
    assert reap_abandoned() == 1
    allowance.refresh_from_db()
    assert allowance.reserved == 0 and Budget.objects.get(tenant=alice.tenant).reserved == 0


def test_a_judged_chat_answer_keeps_its_prompts_embedding_for_the_learned_router(api, alice, chat_model, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    policy = chat_policy(alice.tenant, "tiny-chat", "gpt-fake", threshold=0.99)
    RoutingPolicy.objects.filter(pk=policy.pk).update(shadow_rate=1.0, confidence_floor=0.0)
    post(api, "/v1/chat/completions", {"messages": [{"role": "user", "content": "capital of France?"}], "max_tokens": 8},
         alice, HTTP_X_REQUEST_ID="shadow-embed")
    [local] = records("shadow-embed")
    assert "embedding" not in local.features  # not on every record: 384 floats
    fake_providers.replies("Paris.", json.dumps({"agreement": 1}))
    run_queued()
    local.refresh_from_db()
    assert len(local.features["embedding"]) == 384 and local.features["top1"] is not None
