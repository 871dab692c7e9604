"""A tenant's data as JSON lines: one object per line, `{"kind": "app.model", "id": …, "fields": {…}}`,
the tenant first, then parents before children (tenants.ownership). Secrets are never written: key
hashes, encrypted provider keys and webhook secrets are left out by name (tenants.ownership.is_secret).
Binary fields (uploaded sources) are base64, vectors are lists of numbers."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, TextIO

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from tenants.models import Tenant
from tenants.ownership import is_secret, owned_models

CHUNK = 2000


def export_lines(tenant: Tenant) -> Iterator[tuple[str, str]]:
    """(kind, JSON line) for the tenant and every row it owns, read in chunks: memory stays flat."""
    yield Tenant._meta.label_lower, _line(tenant)
    for owned in reversed(owned_models()):
        for row in owned.rows(tenant.pk).order_by("pk").iterator(chunk_size=CHUNK):
            yield owned.kind, _line(row)


def write_export(tenant: Tenant, out: TextIO) -> dict[str, int]:
    """Write every line to `out`; returns the rows written by kind."""
    counts: dict[str, int] = {}
    for kind, line in export_lines(tenant):
        out.write(line + "\n")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _line(row: models.Model) -> str:
    fields = {field.attname: _value(field.value_from_object(row)) for field in row._meta.concrete_fields
              if not field.primary_key and not is_secret(field)}
    return json.dumps({"kind": row._meta.label_lower, "id": row.pk, "fields": fields}, cls=DjangoJSONEncoder,
                      ensure_ascii=False)


def _value(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "tolist"):  # pgvector's vectors (numpy arrays)
        return value.tolist()
    return value
