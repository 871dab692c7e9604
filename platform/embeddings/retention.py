"""Search records keep the query's preview only as long as the tenant's inference records keep theirs
(routing.retention sends the window that became due; the record's timings and counts stay)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction

from embeddings.models import SearchRecord


def blank_query_previews(*, tenant_id: int, since: datetime | None, cutoff: datetime, **kwargs: Any) -> int:
    rows = SearchRecord.objects.filter(tenant_id=tenant_id, created_at__lt=cutoff).exclude(query_preview="")
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    total = 0
    while True:
        with transaction.atomic():
            ids = list(rows.order_by().values_list("pk", flat=True)[: settings.MODELGATE_DELETION_BATCH])
            if not ids:
                return total
            total += SearchRecord.objects.filter(pk__in=ids).update(query_preview="")
