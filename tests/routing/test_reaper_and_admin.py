"""The reaper closes abandoned records; the admin lists records and policies."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from routing.models import InferenceRecord, RoutingPolicy
from routing.tasks import ensure_schedules, reap_abandoned
from tests.routing.conftest import post


def test_the_reaper_closes_only_old_pending_records(api, alice, starter, settings):
    post(api, "/v1/detect-language", {"text": "Une phrase en français."}, alice)
    make = dict(tenant=alice.tenant, api_key=alice.key, task="language_id", model_slug="lid-176", request_id="x" * 10)
    stuck = InferenceRecord.objects.create(**make, created_at=timezone.now() - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 120))
    fresh = InferenceRecord.objects.create(**make)
    assert reap_abandoned() == 1
    assert reap_abandoned() == 0  # idempotent
    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert (stuck.status, stuck.error_code) == ("abandoned", "abandoned") and stuck.completed_at
    assert fresh.status == "pending"
    assert InferenceRecord.objects.filter(status="ok").count() == 1


@pytest.mark.django_db
def test_the_reaper_runs_every_minute():
    from django_q.models import Schedule

    ensure_schedules()
    schedule = Schedule.objects.get(name="routing: reap abandoned inferences")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == ("routing.tasks.reap_abandoned", "I", 1)


def test_operators_browse_records_and_policies(client, api, alice, starter):
    client.force_login(get_user_model().objects.create_superuser("op", "", "a-long-password-1"))
    post(api, "/v1/detect-language", {"text": "Hola a todos, ¿cómo estáis?"}, alice)
    RoutingPolicy.objects.create(tenant=alice.tenant, task="language_id", candidates=["lid-176"])
    page = client.get("/admin/routing/inferencerecord/", {"status": "ok"}).content.decode()
    assert "lid-176" in page
    record = InferenceRecord.objects.get()
    assert client.get(f"/admin/routing/inferencerecord/{record.pk}/change/").status_code == 200
    assert "lid-176" in client.get("/admin/routing/routingpolicy/").content.decode()


@pytest.mark.django_db
def test_a_policy_naming_unknown_or_wrong_task_models_is_invalid(starter):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="'ghost' is not registered.*'minilm-l6' serves embeddings"):
        RoutingPolicy(task="language_id", candidates=["ghost", "minilm-l6"]).full_clean()
