"""Deleting a tenant removes everything it owns, in batches, in the background; exporting writes it all
as JSON lines without secrets. Another tenant's data is never touched."""
from __future__ import annotations

import base64
import io
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ

from billing import alerts
from billing.models import Alert, Budget, EvaluationAllowance, SpendLimit, UsageDaily
from core.crypto import PROVIDER_CREDENTIALS
from embeddings.models import Collection, Document, IngestionJob, SearchRecord
from routing.models import InferenceRecord, LearnedRouter, ProviderCredential, QualitySignal, RoutingPolicy, ThresholdChange
from tenants import deletion, services
from tenants.models import ApiKey, Tenant, TenantDeletion
from tenants.ownership import owned_models
from tests.billing.test_redis_store import redis_url  # noqa: F401  (a real redis-server)

pytestmark = pytest.mark.django_db

PROVIDER_KEY = "sk-tenant-own-provider-key-0123456789"


def populate(tenant: Tenant, *, records: int = 3, documents: int = 3) -> dict[str, str]:
    """One or more rows of every kind a tenant owns, as the product writes them; returns its secrets."""
    now = timezone.now()
    key, key_secret = services.issue_api_key(tenant=tenant, name="main")
    budget = Budget.objects.create(tenant=tenant, limit=Decimal("10"), period_end=now + timedelta(days=30))
    webhook_secret = alerts.set_webhook(budget, f"http://127.0.0.1:9/{tenant.slug}-hook")
    budget.save()
    SpendLimit.objects.create(budget=budget, api_key=key, limit=Decimal("1"))
    EvaluationAllowance.objects.create(tenant=tenant, limit=Decimal("5"), period_start=now, period_end=now + timedelta(days=30))
    Alert.objects.create(tenant=tenant, budget=budget, period_start=now, threshold=50)
    UsageDaily.objects.create(tenant=tenant, day=now.date(), model_slug="smollm2", task="chat")
    policy = RoutingPolicy.objects.create(tenant=tenant, task="chat")
    ThresholdChange.objects.create(policy=policy, old=0.5, new=0.6, decided_by="tuner", reason="drift")
    router = LearnedRouter.objects.create(policy=policy, version=1, weights={"w": [1.0]}, trained_on=10, held_out=5,
                                          apgr=0.7, baseline_apgr=0.6)
    RoutingPolicy.objects.filter(pk=policy.pk).update(learned_router=router)  # the cycle the deletion must break
    ProviderCredential.objects.create(tenant=tenant, kind="openai", encrypted_api_key=PROVIDER_CREDENTIALS.encrypt(PROVIDER_KEY))
    first = None
    for i in range(records):
        record = InferenceRecord.objects.create(
            request_id=f"{tenant.slug}-request-{i:04d}", tenant=tenant, api_key=key, task="chat", policy=policy,
            status="ok", cost=Decimal("0.001"), input_preview=f"{tenant.slug} prompt {i}", escalated_from=first)
        first = first or record
        QualitySignal.objects.create(record=record, source="feedback", agreement=1.0)
    collection = Collection.objects.create(tenant=tenant, name="docs", dimension=3)
    for i in range(documents):
        Document.objects.create(collection=collection, tenant=tenant, external_id=f"doc-{i}", text=f"{tenant.slug} text {i}",
                                embedding=[1.0, float(i), 0.5], dim=3, content_hash=f"{i:064d}")
    IngestionJob.objects.create(tenant=tenant, collection=collection, api_key=key, request_id=f"{tenant.slug}-ingest-0001",
                                format="jsonl", source=b'{"id": "x", "text": "raw upload"}\n', total=1)
    SearchRecord.objects.create(request_id=f"{tenant.slug}-search-0001", tenant=tenant, api_key=key, collection=collection,
                                collection_name="docs", mode="vector", k=3, rows=3, latency_ms=1.0, database_ms=0.5,
                                embedding=first)
    return {"key": key_secret, "key_hash": key.secret_hash, "webhook": webhook_secret,
            "webhook_cipher": Budget.objects.get(pk=budget.pk).webhook_secret,
            "provider_cipher": ProviderCredential.objects.get(tenant=tenant).encrypted_api_key}


def owned_counts(tenant_id: int) -> dict[str, int]:
    return {owned.kind: owned.rows(tenant_id).count() for owned in owned_models()}


@pytest.fixture
def two_tenants(tenant_a, tenant_b, settings):
    settings.MODELGATE_WEBHOOK_ALLOW_PRIVATE = True  # the hooks below point at loopback
    secrets = populate(tenant_a, records=7, documents=9)
    populate(tenant_b)
    return tenant_a, tenant_b, secrets


def test_the_fixture_covers_every_kind_a_tenant_owns(two_tenants):
    alpha, _, _ = two_tenants
    assert len(owned_models()) >= 16
    assert all(count > 0 for count in owned_counts(alpha.pk).values()), owned_counts(alpha.pk)


def test_deleting_removes_everything_of_the_tenant_and_nothing_of_another(two_tenants, settings, django_capture_on_commit_callbacks):
    alpha, bravo, _ = two_tenants
    settings.MODELGATE_DELETION_BATCH = 2  # many small transactions
    bravo_before = owned_counts(bravo.pk)
    queued = OrmQ.objects.count()
    with django_capture_on_commit_callbacks(execute=True):
        job, created = deletion.request_deletion(alpha, requested_by="operator")
    assert created and OrmQ.objects.count() == queued + 1  # the job went to the task cluster
    assert Tenant.objects.get(pk=alpha.pk).status == Tenant.Status.SUSPENDED  # keys stop at once
    with CaptureQueriesContext(connection) as queries:
        assert deletion.run(job.pk) == "done"
    # Each batch of two rows is its own transaction (a savepoint inside this test's own transaction).
    batches = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SAVEPOINT")]
    assert len(batches) >= 4 + 5 + 16  # 7 records, 9 documents, and at least one batch per kind
    assert not Tenant.objects.filter(pk=alpha.pk).exists()
    assert set(owned_counts(alpha.pk).values()) == {0}
    assert not Document.objects.filter(text__startswith="alpha").exists()
    assert owned_counts(bravo.pk) == bravo_before
    job.refresh_from_db()
    assert job.status == TenantDeletion.Status.DONE and job.finished_at is not None and job.slug == "alpha"
    assert job.counts["routing.InferenceRecord"] == 7 and job.counts["embeddings.Document"] == 9
    assert job.counts["tenants.Tenant"] == 1 and job.counts["tenants.ApiKey"] == 1
    assert job.removed == sum(job.counts.values())


def test_a_deletion_out_of_time_continues_in_a_new_job(two_tenants, settings):
    alpha, _, _ = two_tenants
    job, _ = deletion.request_deletion(alpha, background=False)
    queued = OrmQ.objects.count()
    assert deletion.run(job.pk, time_limit=0) == "continued"
    assert OrmQ.objects.count() == queued + 1
    assert Tenant.objects.filter(pk=alpha.pk).exists()
    assert deletion.run(job.pk) == "done" and not Tenant.objects.filter(pk=alpha.pk).exists()
    assert deletion.run(job.pk) == "done"  # a second delivery of the same job changes nothing


def test_asking_twice_keeps_one_open_deletion(two_tenants):
    alpha, _, _ = two_tenants
    first, created = deletion.request_deletion(alpha, background=False)
    again, created_again = deletion.request_deletion(alpha, background=False)
    assert created and not created_again and again.pk == first.pk
    assert TenantDeletion.objects.count() == 1


def test_a_failed_deletion_says_why_and_goes_on_when_asked_again(two_tenants, monkeypatch):
    alpha, _, _ = two_tenants
    job, _ = deletion.request_deletion(alpha, background=False)
    real_filter = deletion.Tenant.objects.filter

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(deletion.Tenant.objects, "filter", broken)  # fails at the very end, after every batch
    with pytest.raises(RuntimeError):
        deletion.run(job.pk)
    monkeypatch.setattr(deletion.Tenant.objects, "filter", real_filter)
    job.refresh_from_db()
    assert job.status == TenantDeletion.Status.FAILED and "the database went away" in job.error
    assert job.counts["routing.InferenceRecord"] == 7  # what went before the failure is counted
    again, created = deletion.request_deletion(alpha, background=False, requested_by="second try")
    assert again.pk == job.pk and again.status == TenantDeletion.Status.PENDING and again.error == ""
    assert deletion.run(again.pk) == "done" and not Tenant.objects.filter(pk=alpha.pk).exists()
    again.refresh_from_db()
    assert again.counts["routing.InferenceRecord"] == 7 and again.counts["tenants.Tenant"] == 1
    assert TenantDeletion.objects.count() == 1


def cached_answer_keys(*tenants: Tenant) -> list[str]:
    """Keys of cached answers as the router writes them (routing.router._cache_key)."""
    from registry.models import ModelSpec
    from routing.router import _cache_key

    spec = ModelSpec(slug="lid-176", updated_at=timezone.now())
    return [_cache_key(ApiKey(tenant_id=tenant.pk), "language_id", spec, [f"hello {tenant.slug}"]) for tenant in tenants]


def test_the_deleted_tenants_cached_answers_go_too(two_tenants):
    from django.core.cache import cache

    alpha, bravo, _ = two_tenants
    alpha_key, bravo_key = cached_answer_keys(alpha, bravo)
    cache.set(alpha_key, {"values": ["en"]}, 3600)
    cache.set(bravo_key, {"values": ["en"]}, 3600)
    job, _ = deletion.request_deletion(alpha, background=False)
    assert deletion.run(job.pk) == "done"
    assert cache.get(alpha_key) is None and cache.get(bravo_key) == {"values": ["en"]}
    job.refresh_from_db()
    assert job.counts["routing.retention.forget_cached_results"] == 1


def test_cached_answers_in_redis_go_too(two_tenants, redis_url, settings):
    from django.core.cache import cache

    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}}
    assert isinstance(caches["default"], RedisCache)
    cache.clear()
    alpha, bravo, _ = two_tenants
    alpha_key, bravo_key = cached_answer_keys(alpha, bravo)
    cache.set(alpha_key, 1, 3600)
    cache.set(bravo_key, 2, 3600)
    job, _ = deletion.request_deletion(alpha, background=False)
    deletion.run(job.pk)
    assert cache.get(alpha_key) is None and cache.get(bravo_key) == 2


def test_the_command_deletes_now_and_prints_the_counts(two_tenants):
    alpha, bravo, _ = two_tenants
    out = io.StringIO()
    call_command("tenants", "delete", "alpha", "--yes", "--now", stdout=out)
    assert "Deleted tenant alpha" in out.getvalue() and "routing.InferenceRecord" in out.getvalue()
    assert not Tenant.objects.filter(slug="alpha").exists() and set(owned_counts(alpha.pk).values()) == {0}
    assert Tenant.objects.filter(slug="bravo").exists() and all(owned_counts(bravo.pk).values())


def test_the_command_queues_by_default_and_needs_confirmation(two_tenants):
    with pytest.raises(CommandError, match="add --yes"):
        call_command("tenants", "delete", "alpha", stdout=io.StringIO())
    assert Tenant.objects.get(slug="alpha").status == Tenant.Status.ACTIVE  # nothing happened
    with pytest.raises(CommandError, match="No tenant with slug 'nobody'"):
        call_command("tenants", "delete", "nobody", "--yes", stdout=io.StringIO())
    out = io.StringIO()
    call_command("tenants", "delete", "alpha", "--yes", stdout=out)
    assert "is suspended; its deletion" in out.getvalue()
    assert TenantDeletion.objects.get().status == TenantDeletion.Status.PENDING
    listing = io.StringIO()
    call_command("tenants", "deletions", stdout=listing)
    assert "alpha" in listing.getvalue() and "pending" in listing.getvalue() and "bravo" not in listing.getvalue()
    deletion.run(TenantDeletion.objects.get().pk)
    listing = io.StringIO()
    call_command("tenants", "deletions", stdout=listing)
    line = listing.getvalue().splitlines()[0]
    removed = TenantDeletion.objects.get().removed
    assert removed > 30 and "alpha" in line and "done" in line and f" {removed} rows" in line and "finished" in line


# --- the admin ---------------------------------------------------------------------------------------
@pytest.fixture
def operator(client, db):
    client.force_login(get_user_model().objects.create_superuser("operator", "", "a-long-password-1"))
    return client


def test_the_admin_asks_then_queues_the_deletion_and_shows_its_progress(operator, two_tenants):
    alpha, bravo, _ = two_tenants
    changelist = "/admin/tenants/tenant/"
    page = operator.get(changelist).content.decode()
    assert 'value="delete_tenants"' in page and 'value="delete_selected"' not in page
    ask = operator.post(changelist, {"action": "delete_tenants", "_selected_action": [alpha.pk]})
    assert ask.status_code == 200 and "tenants-to-delete" in ask.content.decode()
    assert Tenant.objects.get(pk=alpha.pk).status == Tenant.Status.ACTIVE and not TenantDeletion.objects.exists()
    done = operator.post(changelist, {"action": "delete_tenants", "_selected_action": [alpha.pk], "confirm": "yes"})
    assert done.status_code == 302
    job = TenantDeletion.objects.get()
    assert job.requested_by == "operator" and Tenant.objects.get(pk=alpha.pk).status == Tenant.Status.SUSPENDED
    deletion.run(job.pk)
    listing = operator.get("/admin/tenants/tenantdeletion/").content.decode()
    assert "alpha" in listing and "Done" in listing
    detail = operator.get(f"/admin/tenants/tenantdeletion/{job.pk}/change/").content.decode()
    assert "routing.InferenceRecord: 3" not in detail and "routing.InferenceRecord: 7" in detail
    assert operator.get("/admin/tenants/tenantdeletion/add/").status_code == 403
    assert Tenant.objects.filter(pk=bravo.pk).exists()


def test_the_change_pages_delete_link_goes_through_the_background_deletion(operator, two_tenants):
    alpha, _, _ = two_tenants
    url = f"/admin/tenants/tenant/{alpha.pk}/delete/"
    assert "tenants-to-delete" in operator.get(url).content.decode()
    response = operator.post(url, {"confirm": "yes"})
    assert response.status_code == 302 and response["Location"] == "/admin/tenants/tenantdeletion/"
    assert TenantDeletion.objects.get().slug == "alpha"
    assert Tenant.objects.filter(pk=alpha.pk).exists()  # still there until the job runs


# --- export -----------------------------------------------------------------------------------------
def test_export_writes_every_row_as_a_json_line_without_secrets(two_tenants, tmp_path):
    alpha, _, secrets = two_tenants
    target = tmp_path / "alpha.jsonl"
    err = io.StringIO()
    call_command("tenants", "export", "alpha", "--output", str(target), stderr=err)
    assert target.stat().st_mode & 0o777 == 0o600  # it holds everything the tenant sent
    text = target.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["kind"] == "tenants.tenant" and lines[0]["fields"]["slug"] == "alpha"
    kinds = {line["kind"] for line in lines}
    assert kinds == {"tenants.tenant"} | {owned.kind for owned in owned_models()}
    counts = {kind: sum(line["kind"] == kind for line in lines) for kind in kinds}
    assert counts["routing.inferencerecord"] == 7 and counts["embeddings.document"] == 9
    assert "Exported tenant alpha" in err.getvalue()
    # Nothing of another tenant, no secret in any form.
    assert "bravo" not in text
    for secret in secrets.values():
        assert secret not in text
    assert PROVIDER_KEY not in text
    key = next(line for line in lines if line["kind"] == "tenants.apikey")
    assert "secret_hash" not in key["fields"] and key["fields"]["prefix"]
    budget = next(line for line in lines if line["kind"] == "billing.budget")
    assert "webhook_secret" not in budget["fields"] and budget["fields"]["webhook_url"].endswith("alpha-hook")
    credential = next(line for line in lines if line["kind"] == "routing.providercredential")
    assert "encrypted_api_key" not in credential["fields"] and credential["fields"]["kind"] == "openai"
    # Tenant data comes back whole: texts, vectors, the uploaded source.
    document = next(line for line in lines if line["kind"] == "embeddings.document" and line["fields"]["external_id"] == "doc-2")
    assert document["fields"]["text"] == "alpha text 2" and document["fields"]["embedding"] == [1.0, 2.0, 0.5]
    job = next(line for line in lines if line["kind"] == "embeddings.ingestionjob")
    assert base64.b64decode(job["fields"]["source"]) == b'{"id": "x", "text": "raw upload"}\n'


def test_export_to_standard_output_and_of_an_unknown_tenant(two_tenants):
    out = io.StringIO()
    call_command("tenants", "export", "bravo", stdout=out, stderr=io.StringIO())
    lines = out.getvalue().splitlines()
    assert all(json.loads(line)["kind"] for line in lines) and json.loads(lines[0])["fields"]["slug"] == "bravo"
    assert "alpha" not in out.getvalue()
    with pytest.raises(CommandError, match="No tenant with slug"):
        call_command("tenants", "export", "nobody", stdout=io.StringIO())


def test_keys_stop_working_once_deletion_is_asked(two_tenants, api):
    alpha, _, _ = two_tenants
    key, secret = services.issue_api_key(tenant=alpha, name="late")
    assert api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    deletion.request_deletion(alpha, background=False)
    assert api.get("/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code in (401, 403)
    assert ApiKey.objects.filter(pk=key.pk).exists()


def test_references_from_outside_the_tenant_are_cleared_as_django_would(two_tenants):
    """The fast path (tenants.deletion.delete_rows) keeps Django's on_delete rules: a SET_NULL reference
    from a row that stays is cleared, and the row stays."""
    alpha, bravo, _ = two_tenants
    alpha_record = InferenceRecord.objects.filter(tenant=alpha).first()
    bravo_signal = QualitySignal.objects.filter(record__tenant=bravo).first()
    QualitySignal.objects.filter(pk=bravo_signal.pk).update(teacher=alpha_record)
    job, _ = deletion.request_deletion(alpha, background=False)
    deletion.run(job.pk)
    bravo_signal.refresh_from_db()
    assert bravo_signal.teacher_id is None and bravo_signal.record.tenant_id == bravo.pk
