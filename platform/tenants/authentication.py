"""API-key authentication (the key is the principal) and the tenant-scoped default permission."""
from __future__ import annotations

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

from tenants.models import KEY_PATTERN, ApiKey

# Compared against when the prefix is unknown, so a miss costs the same work as a wrong secret.
_UNKNOWN_KEY = ApiKey(secret_hash=ApiKey.hash_secret("no such key"))


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
        try:
            # get(), not first(): no ORDER BY, and the prefix is unique.
            # The tenant's budget comes in the same query: routing needs it on every paid request.
            key = ApiKey.objects.select_related("tenant", "tenant__budget").get(prefix=match["prefix"])
        except ApiKey.DoesNotExist:
            key = None
        candidate = key if key is not None else _UNKNOWN_KEY
        if not candidate.matches(match["secret"]) or key is None:
            raise exceptions.AuthenticationFailed("The API key is not valid.", code="invalid_api_key")
        now = timezone.now()
        if key.is_revoked:
            raise exceptions.AuthenticationFailed("This API key was revoked.", code="key_revoked")
        if key.is_expired(now):
            raise exceptions.AuthenticationFailed("This API key has expired.", code="key_expired")
        if not key.tenant.is_active:
            raise exceptions.PermissionDenied("This tenant is suspended.", code="tenant_suspended")
        self._touch(key, now)
        return AnonymousUser(), key

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
    def _touch(key: ApiKey, now: Any) -> None:
        """Record use at most once per resolution window: a busy key should not write on every request."""
        cutoff = now - timedelta(seconds=settings.MODELGATE_KEY_LAST_USED_RESOLUTION)
        if key.last_used_at is not None and key.last_used_at > cutoff:
            return
        # Conditional, so that concurrent requests in the same window write once between them.
        ApiKey.objects.filter(pk=key.pk).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff)).update(
            last_used_at=now
        )
        key.last_used_at = now


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
