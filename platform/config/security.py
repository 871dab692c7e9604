"""Who is logging in: the address the admin-login lockout (django-axes) counts failures against."""
from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    """The peer's address; behind the TLS proxy (MODELGATE_BEHIND_TLS_PROXY), the address that proxy
    appended last to X-Forwarded-For. Only that last entry is the proxy's own word: earlier ones come
    from the client and could name anyone, so trusting them would let one attacker spread failures
    over made-up addresses, or lock out someone else's."""
    peer = request.META.get("REMOTE_ADDR", "")
    if settings.MODELGATE_BEHIND_TLS_PROXY:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if forwarded and forwarded[-1]:
            try:
                return str(ipaddress.ip_address(forwarded[-1]))
            except ValueError:
                pass
    return peer
