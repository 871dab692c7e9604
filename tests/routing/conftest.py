"""Routing fixtures: the starter models registered, and helpers to call the API and read records."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from registry import services
from registry.models import ModelSpec
from routing.models import InferenceRecord

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "audio"


@pytest.fixture
def starter(db) -> dict[str, ModelSpec]:
    services.register_starter_pack()
    return {spec.slug: spec for spec in ModelSpec.objects.all()}


def post(api, path: str, body: dict, caller=None, **extra):
    headers = caller.auth if caller else {}
    return api.post(path, json.dumps(body), content_type="application/json", **headers, **extra)


def records(request_id: str | None = None):
    queryset = InferenceRecord.objects.order_by("created_at")
    return list(queryset.filter(request_id=request_id) if request_id else queryset)


def audio_file(name: str) -> io.BytesIO:
    upload = io.BytesIO((FIXTURES / name).read_bytes())
    upload.name = name
    return upload
