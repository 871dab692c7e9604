"""Operations on tenants and keys, shared by the admin, the management commands and the API."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from tenants.models import ApiKey, Scope, Tenant


def create_tenant(*, slug: str, name: str | None = None) -> Tenant:
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean()
    tenant.save()
    return tenant


def issue_api_key(
    *,
    tenant: Tenant,
    name: str,
    scopes: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    local_only: bool = False,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; the returned plaintext is the only copy of the secret there will ever be."""
    key, plaintext = ApiKey.build(
        tenant=tenant,
        name=name,
        scopes=list(scopes) if scopes else [Scope.ALL.value],
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        local_only=local_only,
        allowed_models=list(allowed_models or []),
        expires_at=expires_at,
    )
    key.full_clean()
    key.save()
    return key, plaintext


def revoke_api_key(*, key: ApiKey, now: datetime | None = None) -> bool:
    """Revoke now; False when it already was."""
    now = now or timezone.now()
    updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)
    if updated:
        key.revoked_at = now
    return bool(updated)


@transaction.atomic
def rotate_api_key(*, key: ApiKey, grace: timedelta, now: datetime | None = None) -> tuple[ApiKey, str]:
    """Issue a replacement with the same name, scopes and limits; the old key works for `grace` more."""
    now = now or timezone.now()
    old = ApiKey.objects.select_for_update().get(pk=key.pk)
    if old.is_revoked or old.is_expired(now):
        raise ValueError(f"Key {old.prefix} is {old.state}; only an active key can be rotated.")
    new, plaintext = issue_api_key(
        tenant=old.tenant, name=old.name, scopes=old.scopes, rpm_limit=old.rpm_limit, tpm_limit=old.tpm_limit,
        local_only=old.local_only, allowed_models=old.allowed_models, expires_at=old.expires_at,
    )
    if grace <= timedelta(0):
        old.revoked_at = now
    else:
        old.expires_at = min(old.expires_at, now + grace) if old.expires_at else now + grace
    old.replaced_by = new
    old.save(update_fields=["revoked_at", "expires_at", "replaced_by"])
    key.refresh_from_db()
    return new, plaintext
