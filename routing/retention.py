"""Retention of what tenants sent: after a tenant's retention period an inference record loses its
input and output previews, its full input text and its feedback comment; its costs, usage, timings
and routing facts stay, so usage reports, budgets and the tuner are unchanged."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.db import DatabaseCache
from django.core.cache.backends.redis import RedisCache
from django.db import connection, transaction
from django.dispatch import Signal
from django.db.models import Q
from django.utils import timezone

from routing.models import InferenceRecord
from tenants.models import Tenant

logger = logging.getLogger("modelgate.routing")

TEXT_FIELDS = ("input_preview", "input_text", "output_preview", "feedback_comment")

# Sent once per tenant and run with the window that became due (tenant_id, since — None for "from the
# start" — and cutoff): apps above routing that keep texts of the tenant's (search queries) blank theirs
# in the same window, without this layer knowing them. Receivers return how many rows they blanked.
texts_expired = Signal()
_HAS_TEXT = Q(input_preview__gt="") | Q(input_text__gt="") | Q(output_preview__gt="") | Q(feedback_comment__gt="")


def retention_days(tenant: Tenant) -> int:
    """The tenant's own period, else the operator's default; 0 keeps texts for good."""
    if tenant.record_retention_days:
        return tenant.record_retention_days
    return settings.MODELGATE_RECORD_RETENTION_DAYS


def prune_record_texts(*, now: datetime | None = None) -> dict[str, int]:
    """Blank the texts of every tenant's records older than its retention; returns rows blanked by tenant.

    Each tenant's prune starts where its last one stopped (`record_texts_pruned_until`): rows before that
    are blank already, so an hourly run reads only the hour that became due, not the whole history."""
    now = now or timezone.now()
    blanked: dict[str, int] = {}
    for tenant in Tenant.objects.only("pk", "slug", "record_retention_days", "record_texts_pruned_until"):
        days = retention_days(tenant)
        if not days:
            continue
        cutoff = now - timedelta(days=days)
        since = tenant.record_texts_pruned_until
        if since is not None and since >= cutoff:
            continue  # the period was lengthened, or nothing new is due
        count = _blank(tenant.pk, since, cutoff)
        count += sum(result for _, result in texts_expired.send(sender=Tenant, tenant_id=tenant.pk, since=since, cutoff=cutoff))
        Tenant.objects.filter(pk=tenant.pk).update(record_texts_pruned_until=cutoff)
        if count:
            blanked[tenant.slug] = count
            logger.info("record texts pruned", extra={"tenant": tenant.slug, "records": count, "before": cutoff.isoformat()})
    return blanked


def _blank(tenant_id: int, since: datetime | None, cutoff: datetime) -> int:
    """Blank in batches of MODELGATE_DELETION_BATCH rows, each its own short transaction."""
    rows = InferenceRecord.objects.filter(_HAS_TEXT, tenant_id=tenant_id, created_at__lt=cutoff)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    total = 0
    while True:
        with transaction.atomic():
            ids = list(rows.order_by().values_list("pk", flat=True)[: settings.MODELGATE_DELETION_BATCH])
            if not ids:
                return total
            total += InferenceRecord.objects.filter(pk__in=ids).update(**{field: "" for field in TEXT_FIELDS})


def forget_cached_results(*, tenant_id: int, **kwargs: object) -> int:
    """Drop a deleted tenant's cached answers (routing.router caches them under `mg:result:<tenant>:`)
    at once, rather than leaving them until their time to live ends. The database cache and Redis can
    be searched by prefix; a process-local cache cannot, and its entries simply expire."""
    cache = caches["default"]  # the backend itself (django.core.cache.cache is a proxy to it)
    prefix = cache.make_key(f"mg:result:{tenant_id}:")
    if isinstance(cache, DatabaseCache):
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(cache._table)} WHERE cache_key LIKE %s", [escaped + "%"])
            return cursor.rowcount
    if isinstance(cache, RedisCache):
        client = cache._cache.get_client(write=True)
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        return sum(client.delete(key) for key in client.scan_iter(match=pattern, count=1000))
    return 0
