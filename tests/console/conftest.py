"""Console fixtures: an operator, a staff member without permissions, a non-staff user, and records
built by hand so that every figure on the pages can be checked against them."""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from registry.models import ModelSpec
from routing.models import InferenceRecord

DASHBOARD = "/admin/routing/inferencerecord/dashboard/"
RECORDS = "/admin/routing/inferencerecord/"


@pytest.fixture
def operator(db, client) -> Client:
    client.force_login(get_user_model().objects.create_superuser("ops-anna", "", "a-long-password-1"))
    return client


@pytest.fixture
def staff_without_permissions(db) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user("staff-ben", "", "a-long-password-2", is_staff=True))
    return client


@pytest.fixture
def customer(db) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user("carl", "", "a-long-password-3"))
    return client


@pytest.fixture
def models(db) -> dict[str, ModelSpec]:
    """One local model and one premium provider model."""
    local = ModelSpec.objects.create(slug="lid-local", display_name="local", task="language_id", backend="fasttext",
                                     source_kind="package", source="x/y", tier="local")
    premium = ModelSpec.objects.create(slug="gpt-premium", display_name="premium", task="language_id", backend="openai",
                                       source_kind="provider", source="gpt-4o-mini", tier="premium")
    return {"local": local, "premium": premium}


def record(tenant, model: ModelSpec, at: datetime, **fields: object) -> InferenceRecord:
    values = {"request_id": f"req-{at:%H%M%S%f}-{model.slug}", "task": "language_id", "model": model,
              "model_slug": model.slug, "tier": model.tier, "status": "ok", "created_at": at,
              "completed_at": at + timedelta(milliseconds=50), "latency_ms": 10.0, "cost": Decimal("0")}
    values.update(fields)
    return InferenceRecord.objects.create(tenant=tenant, **values)
