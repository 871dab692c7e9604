"""Deleting a tenant and everything it owns, in the background, batch by batch.

One DELETE of a large tenant would hold locks on millions of rows for minutes and make one huge
transaction; here each batch (MODELGATE_DELETION_BATCH rows of one kind, with whatever cascades
from them) commits on its own, children before parents (tenants.ownership), and the TenantDeletion
row shows the counts as they grow. The tenant is suspended first, so its keys stop working while its
data goes; a job stopped half-way (a restart, a timeout) is simply run again and goes on.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, router, transaction
from django.db.models import signals
from django.db.models.deletion import get_candidate_relations_to_delete
from django.dispatch import Signal
from django.utils import timezone

from tenants.models import Tenant, TenantDeletion
from tenants.ownership import owned_models

logger = logging.getLogger("modelgate.tenants")

_OPEN = [TenantDeletion.Status.PENDING, TenantDeletion.Status.RUNNING]

# Sent (tenant_id) once the tenant's rows are gone: apps above this layer drop what they keep of it
# outside the database's foreign keys (cached answers). Receivers return how many entries they removed.
tenant_deleted = Signal()


def request_deletion(tenant: Tenant, *, requested_by: str = "", background: bool = True) -> tuple[TenantDeletion, bool]:
    """Suspend the tenant and queue its deletion (unless the caller runs it itself: `background=False`);
    returns the deletion and whether it is new (a tenant being deleted keeps its one open deletion)."""
    with transaction.atomic():
        Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED, updated_at=timezone.now())
        failed = TenantDeletion.objects.filter(tenant_id=tenant.pk, status=TenantDeletion.Status.FAILED).first()
        try:
            with transaction.atomic():
                if failed is not None:  # asked again after a failure: the same deletion goes on, counts and all
                    TenantDeletion.objects.filter(pk=failed.pk).update(status=TenantDeletion.Status.PENDING, error="",
                                                                       requested_by=requested_by[:150])
                    deletion = TenantDeletion.objects.get(pk=failed.pk)
                else:
                    deletion = TenantDeletion.objects.create(tenant_id=tenant.pk, slug=tenant.slug,
                                                             requested_by=requested_by[:150])
        except IntegrityError:
            return TenantDeletion.objects.get(tenant_id=tenant.pk, status__in=_OPEN), False
        if background:
            transaction.on_commit(lambda: queue(deletion))
    logger.warning("tenant deletion requested", extra={"tenant": tenant.slug, "deletion_id": deletion.pk, "by": requested_by})
    return deletion, True


def queue(deletion: TenantDeletion) -> None:
    from django_q.tasks import async_task

    async_task("tenants.deletion.run", deletion.pk, task_name=f"delete tenant {deletion.slug} ({deletion.pk})")


def run(deletion_id: int, *, time_limit: float | None = None) -> str:
    """Delete what is left of the tenant. Works for at most `time_limit` seconds (by default a share of
    the task cluster's timeout), then queues its own continuation: no single task runs into the timeout."""
    deletion = TenantDeletion.objects.get(pk=deletion_id)
    if deletion.status == TenantDeletion.Status.DONE:
        return "done"
    limit = time_limit if time_limit is not None else settings.Q_CLUSTER["timeout"] * 0.5
    deadline = time.monotonic() + limit
    TenantDeletion.objects.filter(pk=deletion.pk).update(status=TenantDeletion.Status.RUNNING, error="")
    counts = Counter(deletion.counts)
    try:
        for owned in owned_models():
            rows = owned.rows(deletion.tenant_id)
            while True:
                if time.monotonic() > deadline:
                    _save(deletion, counts)
                    queue(deletion)
                    return "continued"
                with transaction.atomic():
                    ids = list(rows.values_list("pk", flat=True)[: settings.MODELGATE_DELETION_BATCH])
                    if not ids:
                        break
                    counts.update(delete_rows(owned.model, ids))
                _save(deletion, counts)
        with transaction.atomic():
            # Whatever arrived meanwhile (a request admitted before the suspension) goes with the tenant.
            counts.update(Tenant.objects.filter(pk=deletion.tenant_id).delete()[1])
        for receiver, removed in tenant_deleted.send(sender=Tenant, tenant_id=deletion.tenant_id):
            counts[f"{receiver.__module__}.{receiver.__name__}"] += removed
    except Exception as exc:
        TenantDeletion.objects.filter(pk=deletion.pk).update(
            status=TenantDeletion.Status.FAILED, counts=_clean(counts), error=f"{exc.__class__.__name__}: {exc}"[:2000])
        logger.exception("tenant deletion failed", extra={"tenant": deletion.slug, "deletion_id": deletion.pk})
        raise
    TenantDeletion.objects.filter(pk=deletion.pk).update(
        status=TenantDeletion.Status.DONE, counts=_clean(counts), finished_at=timezone.now())
    logger.warning("tenant deleted", extra={"tenant": deletion.slug, "deletion_id": deletion.pk, "rows": sum(counts.values())})
    return "done"


def delete_rows(model: type[models.Model], ids: list[Any]) -> Counter[str]:
    """Delete these rows of `model` as Django's delete would, returning the rows removed by kind.

    Django's collector loads every row as a model instance and clears each SET_NULL reference in
    chunks of 100: for a big table of plain rows that is most of the time spent. When no signal
    listens and every reference to the model cascades or is cleared, the same work is three or four
    statements over the batch: clear the references, delete the referencing rows (children first, so
    normally none are left), delete the rows. Anything else goes through the collector."""
    if not _plain(model):
        return Counter(model._base_manager.filter(pk__in=ids).delete()[1])
    counts: Counter[str] = Counter()
    for relation in get_candidate_relations_to_delete(model._meta):  # hidden ones too (related_name="+")
        field = relation.field
        referencing = relation.related_model._base_manager.filter(**{f"{field.name}__in": ids})
        if field.remote_field.on_delete is models.SET_NULL:
            referencing.update(**{field.name: None})
        elif field.remote_field.on_delete is models.CASCADE:
            children = list(referencing.values_list("pk", flat=True))
            if children:
                counts.update(delete_rows(relation.related_model, children))
    # The collector's own last step (QuerySet._raw_delete): one DELETE, no rows loaded.
    counts[model._meta.label] += model._base_manager.filter(pk__in=ids)._raw_delete(router.db_for_write(model))
    return counts


def _plain(model: type[models.Model]) -> bool:
    """No delete signal listens for it, it has no many-to-many rows, and every reference to it either
    cascades or is cleared: deleting it needs no model instances."""
    if any(signal.has_listeners(model) for signal in (signals.pre_delete, signals.post_delete)):
        return False
    if model._meta.many_to_many or any(r.many_to_many for r in model._meta.get_fields(include_hidden=True)):
        return False
    return all(r.field.remote_field.on_delete in (models.CASCADE, models.SET_NULL)
               for r in get_candidate_relations_to_delete(model._meta))


def _clean(counts: Counter[str]) -> dict[str, int]:
    return {kind: count for kind, count in sorted(counts.items()) if count}


def _save(deletion: TenantDeletion, counts: Counter[str]) -> None:
    TenantDeletion.objects.filter(pk=deletion.pk).update(counts=_clean(counts), updated_at=timezone.now())
