"""`manage.py keys create|list|revoke|rotate`: the secret of a new key is printed once."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tenants import services
from tenants.management.commands.tenants import get_tenant
from tenants.models import ApiKey, Scope

_DURATION = re.compile(r"^(?P<amount>\d+)(?P<unit>[smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `24h`, `7d`, or `0`."""
    if text == "0":
        return timedelta(0)
    match = _DURATION.match(text.strip())
    if not match:
        raise CommandError(f"Invalid duration {text!r}: use a number with s, m, h or d (e.g. 24h), or 0.")
    return timedelta(**{_UNITS[match["unit"]]: int(match["amount"])})


def parse_scopes(text: str) -> list[str]:
    scopes = [scope.strip() for scope in text.split(",") if scope.strip()]
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown or not scopes:
        raise CommandError(f"Unknown scopes {', '.join(unknown) or '(none given)'}; choose from {', '.join(Scope.values)}.")
    return scopes


class Command(BaseCommand):
    help = "Issue, list, revoke and rotate API keys."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Issue a key for a tenant and print its secret once.")
        create.add_argument("tenant", help="Tenant slug.")
        create.add_argument("--name", default="default")
        create.add_argument("--scopes", default="*", help=f"Comma-separated: {', '.join(Scope.values)}.")
        create.add_argument("--rpm", type=int, help="Requests per minute for this key.")
        create.add_argument("--tpm", type=int, help="Tokens per minute for this key (chat and embeddings).")
        create.add_argument("--expires-in", help="Lifetime, e.g. 30d; never expires when omitted.")
        listing = actions.add_parser("list", help="List keys (prefixes and state, never secrets).")
        listing.add_argument("--tenant", help="Only this tenant's keys.")
        revoke = actions.add_parser("revoke", help="Revoke a key now.")
        revoke.add_argument("prefix")
        rotate = actions.add_parser("rotate", help="Issue a replacement; the old key works for the grace period.")
        rotate.add_argument("prefix")
        rotate.add_argument("--grace", default="24h", help="How long the old key stays valid, e.g. 1h, 7d, or 0.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        getattr(self, f"_{action}")(**options)

    def _create(self, *, tenant: str, name: str, scopes: str, rpm: int | None, tpm: int | None, expires_in: str | None,
                **_: Any) -> None:
        for flag, value in (("--rpm", rpm), ("--tpm", tpm)):
            if value is not None and value < 1:
                raise CommandError(f"{flag} must be at least 1.")
        expires_at = timezone.now() + parse_duration(expires_in) if expires_in else None
        try:
            key, plaintext = services.issue_api_key(
                tenant=get_tenant(tenant), name=name, scopes=parse_scopes(scopes), rpm_limit=rpm, tpm_limit=tpm,
                expires_at=expires_at,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self._print_secret(key, plaintext)

    def _list(self, *, tenant: str | None, **_: Any) -> None:
        keys = ApiKey.objects.select_related("tenant")
        if tenant:
            keys = keys.filter(tenant=get_tenant(tenant))
        for key in keys:
            last_used = key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
            self.stdout.write(
                f"{key.prefix}  {key.tenant.slug:<20} {key.name:<20} {key.state:<8} "
                f"scopes={','.join(key.scopes)} last_used={last_used}"
            )

    def _revoke(self, *, prefix: str, **_: Any) -> None:
        key = self._get_key(prefix)
        if services.revoke_api_key(key=key):
            self.stdout.write(self.style.SUCCESS(f"Revoked key {key.prefix} of {key.tenant.slug}."))
        else:
            self.stdout.write(f"Key {key.prefix} was already revoked.")

    def _rotate(self, *, prefix: str, grace: str, **_: Any) -> None:
        key = self._get_key(prefix)
        try:
            new, plaintext = services.rotate_api_key(key=key, grace=parse_duration(grace))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self._print_secret(new, plaintext)
        until = "now (revoked)" if key.revoked_at else key.expires_at.isoformat(timespec="seconds")
        self.stdout.write(f"The old key {key.prefix} stays valid until {until}.")

    def _get_key(self, prefix: str) -> ApiKey:
        prefix = prefix.removeprefix("mg_").split("_")[0]
        try:
            return ApiKey.objects.select_related("tenant").get(prefix=prefix)
        except ApiKey.DoesNotExist:
            raise CommandError(f"No key with prefix {prefix!r}.") from None

    def _print_secret(self, key: ApiKey, plaintext: str) -> None:
        self.stdout.write(self.style.SUCCESS(f"Issued key {key.prefix} ({key.name}) for tenant {key.tenant.slug}."))
        self.stdout.write("Copy it now; it is not stored and cannot be shown again:")
        self.stdout.write(plaintext)
