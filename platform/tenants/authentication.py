"""API-key authentication (the key is the principal) and the tenant-scoped default permission."""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.recent import Recent
from tenants.models import KEY_PATTERN, ApiKey, Tenant

# Compared against when the prefix is unknown, so a miss costs the same work as a wrong secret.
_UNKNOWN_KEY = ApiKey(secret_hash=ApiKey.hash_secret("no such key"))


class RecentKeys(Recent[tuple[str, str], ApiKey]):
    """Keys that authenticated in the last MODELGATE_KEY_CACHE_SECONDS, so that a busy key costs no query.
    The price is a bounded delay: a key revoked, a tenant suspended or a scope or limit changed elsewhere
    is seen once the entry expires (expiry dates are still checked on every request). Each request gets
    its own copies of the rows (the budget's included)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__(lambda: settings.MODELGATE_KEY_CACHE_SECONDS, clock=clock)

    def lookup(self, prefix: str, secret: str) -> tuple[ApiKey, ApiKey] | None:
        """(the kept row, a private copy for this request), or None when there is no fresh entry."""
        # Found by the secret's digest: a wrong secret misses, and pays the query and constant-time compare.
        kept = self.get((prefix, ApiKey.hash_secret(secret)))
        return None if kept is None else (kept, _private_copy(kept))

    def keep(self, key: ApiKey) -> None:
        self.put((key.prefix, key.secret_hash), _private_copy(key))


def _private_copy(key: ApiKey) -> ApiKey:
    tenant = copy.copy(key.tenant)
    budget = Tenant._meta.get_field("budget")
    kept = budget.get_cached_value(tenant, default=None)
    if kept is not None:
        # The budget's settings ride along; its amounts may be stale, which nothing relies on: money
        # only moves by conditional UPDATEs in the database, and /v1/budget reads the row afresh.
        budget.set_cached_value(tenant, copy.copy(kept))
    private = copy.copy(key)
    private.tenant = tenant
    return private


recent_keys = RecentKeys()


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer mg_<prefix>_<secret>`, or the same key in `x-api-key`."""

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="modelgate"'

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ApiKey] | None:
        raw = self._raw_key(request)
        if raw is None:
            return None
        match = KEY_PATTERN.match(raw)
        if match is None:
            raise exceptions.AuthenticationFailed(
                "The API key is malformed: expected mg_<prefix>_<secret>.", code="malformed_api_key"
            )
        recent = recent_keys.lookup(match["prefix"], match["secret"])
        key = recent[1] if recent is not None else self._verified(match["prefix"], match["secret"])
        now = timezone.now()
        if key.is_revoked:
            raise exceptions.AuthenticationFailed("This API key was revoked.", code="key_revoked")
        if key.is_expired(now):
            raise exceptions.AuthenticationFailed("This API key has expired.", code="key_expired")
        if not key.tenant.is_active:
            raise exceptions.PermissionDenied("This tenant is suspended.", code="tenant_suspended")
        if self._touch(key, now) and recent is not None:
            recent[0].last_used_at = now
        if recent is None:
            recent_keys.keep(key)
        return AnonymousUser(), key

    @staticmethod
    def _verified(prefix: str, secret: str) -> ApiKey:
        try:
            # get(), not first(): no ORDER BY, and the prefix is unique.
            # The tenant's budget comes in the same query: routing needs it on every paid request.
            key = ApiKey.objects.select_related("tenant", "tenant__budget").get(prefix=prefix)
        except ApiKey.DoesNotExist:
            key = None
        candidate = key if key is not None else _UNKNOWN_KEY
        if not candidate.matches(secret) or key is None:
            raise exceptions.AuthenticationFailed("The API key is not valid.", code="invalid_api_key")
        return key

    @staticmethod
    def _raw_key(request: Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, credentials = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip() or " " in credentials.strip():
                raise exceptions.AuthenticationFailed(
                    "The Authorization header must be 'Bearer <API key>'.", code="malformed_authorization"
                )
            return credentials.strip()
        api_key = request.headers.get("x-api-key")
        if api_key is not None:
            return api_key.strip()
        return None

    @staticmethod
    def _touch(key: ApiKey, now: Any) -> bool:
        """Record use at most once per resolution window: a busy key should not write on every request."""
        cutoff = now - timedelta(seconds=settings.MODELGATE_KEY_LAST_USED_RESOLUTION)
        if key.last_used_at is not None and key.last_used_at > cutoff:
            return False
        # Conditional, so that concurrent requests in the same window write once between them.
        ApiKey.objects.filter(pk=key.pk).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff)).update(
            last_used_at=now
        )
        key.last_used_at = now
        return True


class TenantScopePermission(BasePermission):
    """The global default: a valid key, and the scope the view names in `required_scope`."""

    def has_permission(self, request: Request, view: Any) -> bool:
        key = request.auth
        if not isinstance(key, ApiKey):
            return False
        scope = getattr(view, "required_scope", None)
        if scope and not key.has_scope(scope):
            raise exceptions.PermissionDenied(f"This key lacks the '{scope}' scope.", code="missing_scope")
        return True
