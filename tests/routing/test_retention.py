"""Retention: old records lose their texts, per tenant, and keep their costs and usage."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django_q.models import Schedule

from routing import tasks
from routing.models import InferenceRecord
from routing.retention import prune_record_texts
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

TEXTS = dict(input_preview="my secret prompt", input_text="my secret prompt in full", output_preview="the answer",
             feedback_comment="great")


def record(tenant: Tenant, days_old: float, request_id: str) -> InferenceRecord:
    return InferenceRecord.objects.create(
        request_id=request_id, tenant=tenant, task="chat", model_slug="smollm2", status="ok", units_in=12, units_out=30,
        cost=Decimal("0.0042"), latency_ms=80.0, input_digest="d" * 64, created_at=timezone.now() - timedelta(days=days_old),
        **TEXTS,
    )


def texts(request_id: str) -> dict[str, str]:
    return InferenceRecord.objects.filter(request_id=request_id).values(*TEXTS).get()


def test_old_records_lose_their_texts_and_keep_costs_and_usage(tenant_a, settings):
    settings.MODELGATE_RECORD_RETENTION_DAYS = 30
    old, recent = record(tenant_a, 31, "retention-old-1"), record(tenant_a, 29, "retention-new-1")
    assert prune_record_texts() == {"alpha": 1}
    assert texts("retention-old-1") == dict.fromkeys(TEXTS, "")
    assert texts("retention-new-1") == TEXTS
    kept = InferenceRecord.objects.get(pk=old.pk)
    assert (kept.cost, kept.units_in, kept.units_out, kept.latency_ms, kept.input_digest, kept.status) == (
        Decimal("0.0042"), 12, 30, 80.0, "d" * 64, "ok")
    assert InferenceRecord.objects.get(pk=recent.pk).input_text == TEXTS["input_text"]


def test_a_tenant_override_beats_the_default_and_other_tenants_keep_theirs(tenant_a, tenant_b, settings):
    settings.MODELGATE_RECORD_RETENTION_DAYS = 30
    Tenant.objects.filter(pk=tenant_a.pk).update(record_retention_days=7)
    record(tenant_a, 8, "retention-a-8d"), record(tenant_a, 6, "retention-a-6d")
    record(tenant_b, 8, "retention-b-8d"), record(tenant_b, 31, "retention-b-31d")
    assert prune_record_texts() == {"alpha": 1, "bravo": 1}
    assert texts("retention-a-8d") == dict.fromkeys(TEXTS, "") and texts("retention-a-6d") == TEXTS
    assert texts("retention-b-8d") == TEXTS and texts("retention-b-31d") == dict.fromkeys(TEXTS, "")


def test_zero_keeps_texts_for_good_and_the_next_run_starts_where_the_last_stopped(tenant_a, settings):
    settings.MODELGATE_RECORD_RETENTION_DAYS = 0
    record(tenant_a, 400, "retention-forever")
    assert prune_record_texts() == {}
    assert texts("retention-forever") == TEXTS
    settings.MODELGATE_RECORD_RETENTION_DAYS = 10
    assert prune_record_texts() == {"alpha": 1}
    watermark = Tenant.objects.get(pk=tenant_a.pk).record_texts_pruned_until
    assert timezone.now() - timedelta(days=10, minutes=1) < watermark < timezone.now() - timedelta(days=10) + timedelta(minutes=1)
    # A row that crosses the line after the last run is pruned by the next one; nothing is read twice.
    record(tenant_a, 10.5, "retention-crossed")
    Tenant.objects.filter(pk=tenant_a.pk).update(record_texts_pruned_until=watermark - timedelta(days=1))
    assert prune_record_texts() == {"alpha": 1}
    assert texts("retention-crossed") == dict.fromkeys(TEXTS, "")


def test_batches_cover_every_row(tenant_a, settings):
    settings.MODELGATE_RECORD_RETENTION_DAYS = 1
    settings.MODELGATE_DELETION_BATCH = 10
    for i in range(25):
        record(tenant_a, 2, f"retention-batch-{i:03d}")
    assert prune_record_texts() == {"alpha": 25}
    assert not InferenceRecord.objects.exclude(input_preview="").exists()


def test_the_prune_is_scheduled_hourly(tenant_a, settings):
    tasks.ensure_schedules()
    schedule = Schedule.objects.get(name="routing: prune record texts")
    assert schedule.func == "routing.tasks.prune_record_texts" and schedule.schedule_type == Schedule.HOURLY
    settings.MODELGATE_RECORD_RETENTION_DAYS = 5
    record(tenant_a, 6, "retention-scheduled")
    assert tasks.prune_record_texts() == "1 records of 1 tenants pruned"


def test_operators_set_a_tenants_retention_in_the_admin(client, tenant_a):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("operator", "", "a-long-password-1"))
    url = f"/admin/tenants/tenant/{tenant_a.pk}/change/"
    assert 'name="record_retention_days"' in client.get(url).content.decode()
    form = {"slug": "alpha", "name": "Alpha Corp", "status": "active", "record_retention_days": "14",
            "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0", "api_keys-MIN_NUM_FORMS": "0",
            "api_keys-MAX_NUM_FORMS": "1000"}
    assert client.post(url, form).status_code == 302
    assert Tenant.objects.get(pk=tenant_a.pk).record_retention_days == 14
    refused = client.post(url, {**form, "record_retention_days": "0"})
    assert refused.status_code == 200 and Tenant.objects.get(pk=tenant_a.pk).record_retention_days == 14


def test_search_queries_are_pruned_with_the_records(tenant_a, tenant_b, settings):
    from embeddings.models import SearchRecord

    settings.MODELGATE_RECORD_RETENTION_DAYS = 30

    def search(tenant: Tenant, days_old: float, request_id: str) -> None:
        SearchRecord.objects.create(request_id=request_id, tenant=tenant, collection_name="docs", mode="hybrid", k=5, rows=5,
                                    latency_ms=3.0, database_ms=1.0, query_preview="what did the contract say",
                                    created_at=timezone.now() - timedelta(days=days_old))

    search(tenant_a, 31, "search-old-1"), search(tenant_a, 2, "search-new-1"), search(tenant_b, 31, "search-old-b")
    Tenant.objects.filter(pk=tenant_b.pk).update(record_retention_days=60)
    assert prune_record_texts() == {"alpha": 1}
    previews = dict(SearchRecord.objects.values_list("request_id", "query_preview"))
    assert previews == {"search-old-1": "", "search-new-1": "what did the contract say",
                        "search-old-b": "what did the contract say"}
    assert SearchRecord.objects.get(request_id="search-old-1").latency_ms == 3.0
