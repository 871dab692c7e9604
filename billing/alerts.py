"""Budget alerts: once per budget, period and threshold — an Alert row, a log line, an email when
email is configured, and an HMAC-signed webhook with retries when the tenant set one.

Raising happens on the request path (one INSERT … ON CONFLICT DO NOTHING, after the settlement
commits, and only when a threshold was crossed); delivery runs in the background (django-q2), so a
slow webhook never slows a request.

Webhook receivers verify `x-modelgate-signature: v1=<hex>`, the HMAC-SHA256 of
`"<x-modelgate-timestamp>.<raw body>"` under the secret shown when the webhook was set, and should
refuse timestamps older than a few minutes (replays).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from datetime import datetime
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import httpx2
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, connection, transaction

from billing.models import Alert, Budget
from core.crypto import WEBHOOK_SECRETS

logger = logging.getLogger("modelgate.billing")

_INSERT = """
INSERT INTO billing_alert (kind, tenant_id, budget_id, period_start, threshold, spent, "limit", subject, message, created_at,
                           email_status, webhook_status, webhook_attempts, last_error)
VALUES ('budget', %s, %s, %s, %s, %s, %s, '', '', now(), 'pending', 'pending', 0, '')
ON CONFLICT (budget_id, period_start, threshold) WHERE kind = 'budget' DO NOTHING
RETURNING id
"""

# Thresholds already raised by this process: a budget that keeps refusing requests must not cost an
# INSERT each time. The unique constraint stays the guarantee across processes.
_raised: set[tuple[int, datetime, int]] = set()


def raise_alerts(*, budget_id: int, tenant_id: int, period_start: datetime, thresholds: list[int], spent: Decimal,
                 limit: Decimal) -> list[int]:
    """Record each newly crossed threshold and queue its delivery; returns the new alerts' ids."""
    created = []
    for threshold in thresholds:
        marker = (budget_id, period_start, threshold)
        if marker in _raised:
            continue
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(_INSERT, [tenant_id, budget_id, period_start, threshold, spent, limit])
                row = cursor.fetchone()
        except IntegrityError:
            return created  # the budget was deleted meanwhile: nothing to alert about
        if len(_raised) > 100_000:
            _raised.clear()
        _raised.add(marker)
        if row is None:
            continue  # another request or process raised it first
        created.append(row[0])
        logger.warning("budget threshold crossed", extra={
            "tenant_id": tenant_id, "budget_id": budget_id, "threshold": threshold, "spent": str(spent), "limit": str(limit),
        })
        _queue(row[0])
    return created


def budget_exhausted(budget: Budget) -> list[int]:
    """A request the budget refused. When what is spent and held together has reached the highest
    threshold (usually 100%), the limit is reached for all purposes and that alert fires, though settled
    spending may stop just short of it. A refusal of one large request in a roomy budget is no alert."""
    if not budget.alert_thresholds or (budget.pk, budget.period_start, max(budget.alert_thresholds)) in _raised:
        return []
    current = Budget.objects.filter(pk=budget.pk).values("spent", "reserved", "limit", "period_start").first()
    top = max(budget.alert_thresholds)
    if current is None or (current["spent"] + current["reserved"]) * 100 < top * current["limit"]:
        return []
    return raise_alerts(budget_id=budget.pk, tenant_id=budget.tenant_id, period_start=current["period_start"],
                        thresholds=[top], spent=current["spent"], limit=current["limit"])


def _queue(alert_id: int) -> None:
    from django_q.tasks import async_task

    async_task("billing.alerts.deliver", alert_id, task_name=f"alert-{alert_id}", timeout=_delivery_timeout())


def _delivery_timeout() -> int:
    """Long enough for every attempt and pause, but within the cluster's timeout, so that the queue
    never hands a delivery out twice while it is still running."""
    attempts = settings.MODELGATE_WEBHOOK_ATTEMPTS
    backoff = settings.MODELGATE_WEBHOOK_RETRY_SECONDS * (2 ** attempts)
    return min(int(attempts * settings.MODELGATE_WEBHOOK_TIMEOUT + backoff + 60), settings.Q_CLUSTER["timeout"])


# --- delivery (background) ----------------------------------------------------------------------
def raise_drift(*, tenant_id: int, subject: str, message: str, day: datetime) -> int | None:
    """A routing policy of the tenant drifted: one alert per policy and day, delivered like a budget's."""
    budget_id = Budget.objects.filter(tenant_id=tenant_id).values_list("pk", flat=True).first()
    alert, created = Alert.objects.get_or_create(
        kind=Alert.Kind.DRIFT, tenant_id=tenant_id, subject=subject[:200], period_start=day,
        defaults={"budget_id": budget_id, "message": message},
    )
    if not created:
        return None
    logger.warning("routing drift", extra={"tenant_id": tenant_id, "policy": subject, "detail": message})
    _queue(alert.pk)
    return alert.pk


def raise_model_unhealthy(*, tenant_id: int, slug: str, message: str, day: datetime) -> int | None:
    """A model the tenant's requests are routed to cannot serve (its weights do not load): one alert per
    model and day, delivered like a budget's, so that someone replaces the weights."""
    budget_id = Budget.objects.filter(tenant_id=tenant_id).values_list("pk", flat=True).first()
    alert, created = Alert.objects.get_or_create(
        kind=Alert.Kind.MODEL, tenant_id=tenant_id, subject=slug[:200], period_start=day,
        defaults={"budget_id": budget_id, "message": message[:5000]},
    )
    if not created:
        return None
    logger.warning("model unhealthy", extra={"tenant_id": tenant_id, "model": slug, "detail": message[:300]})
    _queue(alert.pk)
    return alert.pk


def payload(alert: Alert) -> dict[str, object]:
    budget = alert.budget
    if alert.kind == Alert.Kind.MODEL:
        return {"type": "model.unhealthy", "alert_id": alert.pk, "tenant": alert.tenant.slug, "model": alert.subject,
                "message": alert.message, "day": alert.period_start.date().isoformat(),
                "created_at": alert.created_at.isoformat()}
    if alert.kind == Alert.Kind.DRIFT:
        return {"type": "routing.drift", "alert_id": alert.pk, "tenant": alert.tenant.slug, "policy": alert.subject,
                "message": alert.message, "day": alert.period_start.date().isoformat(),
                "created_at": alert.created_at.isoformat()}
    return {
        "type": "budget.threshold_crossed",
        "alert_id": alert.pk,
        "tenant": alert.tenant.slug,
        "threshold_percent": alert.threshold,
        "spent": f"{alert.spent:f}",
        "limit": f"{alert.limit:f}",
        "period": budget.period,
        "period_start": alert.period_start.isoformat(),
        "period_end": budget.period_end.isoformat(),
        "at_limit": budget.at_limit,
        "created_at": alert.created_at.isoformat(),
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def deliver(alert_id: int) -> dict[str, str]:
    """Send the alert by email and webhook; each channel's outcome is stored on the row."""
    alert = Alert.objects.select_related("budget", "tenant").get(pk=alert_id)
    body = payload(alert)
    email_status = _email(alert, body) if alert.email_status == Alert.Delivery.PENDING else alert.email_status
    Alert.objects.filter(pk=alert.pk).update(email_status=email_status)
    webhook_status = alert.webhook_status
    if webhook_status == Alert.Delivery.PENDING:
        webhook_status = _webhook(alert, body)
    return {"email": email_status, "webhook": webhook_status}


def _email(alert: Alert, body: dict[str, object]) -> str:
    address = alert.budget.alert_email if alert.budget else ""
    if not address or not settings.MODELGATE_ALERT_EMAILS:
        return Alert.Delivery.SKIPPED
    if alert.kind == Alert.Kind.DRIFT:
        subject, text = f"Modelgate: routing of {alert.subject} drifted", alert.message
    elif alert.kind == Alert.Kind.MODEL:
        subject, text = f"Modelgate: model {alert.subject} cannot serve", alert.message
    else:
        subject, text = _budget_email(alert, body)
    try:
        send_mail(subject, text, None, [address])
    except (OSError, ValueError) as exc:
        Alert.objects.filter(pk=alert.pk).update(last_error=f"email: {exc}"[:2000])
        logger.warning("alert email failed", extra={"alert_id": alert.pk, "error": str(exc)})
        return Alert.Delivery.FAILED
    return Alert.Delivery.SENT


def _budget_email(alert: Alert, body: dict[str, object]) -> tuple[str, str]:
    subject = f"Modelgate: {alert.tenant.slug} has used {alert.threshold}% of its {alert.budget.period} budget"
    text = (
        f"Tenant {alert.tenant.slug} has spent {alert.spent:.4f} of its budget of {alert.limit:.4f} "
        f"({alert.threshold}% threshold). The period ends at {body['period_end']}; at the limit the budget "
        f"will {'refuse paid requests' if alert.budget.at_limit == Budget.AtLimit.BLOCK else 'serve local models only'}."
    )
    return subject, text


def _webhook(alert: Alert, body: dict[str, object]) -> str:
    budget = alert.budget
    if budget is None or not budget.webhook_url or not budget.webhook_secret:
        Alert.objects.filter(pk=alert.pk).update(webhook_status=Alert.Delivery.SKIPPED)
        return Alert.Delivery.SKIPPED
    secret = WEBHOOK_SECRETS.decrypt(budget.webhook_secret)
    raw = json.dumps(body, separators=(",", ":")).encode()
    error = ""
    for attempt in range(1, settings.MODELGATE_WEBHOOK_ATTEMPTS + 1):
        if attempt > 1:
            time.sleep(settings.MODELGATE_WEBHOOK_RETRY_SECONDS * 2 ** (attempt - 2))
        try:
            address = check_webhook_url(budget.webhook_url)  # again at send time: DNS may have changed
            timestamp = str(int(time.time()))
            response = post_pinned(
                budget.webhook_url, address, content=raw,
                headers={"content-type": "application/json", "user-agent": "Modelgate-Alerts/1",
                         "x-modelgate-event": str(body["type"]), "x-modelgate-timestamp": timestamp,
                         "x-modelgate-signature": sign(secret, timestamp, raw)},
            )
            if 200 <= response.status_code < 300:
                Alert.objects.filter(pk=alert.pk).update(webhook_status=Alert.Delivery.SENT, webhook_attempts=attempt)
                return Alert.Delivery.SENT
            error = f"webhook answered {response.status_code}"
        except ValidationError as exc:
            error = f"webhook refused: {'; '.join(exc.messages)}"
            Alert.objects.filter(pk=alert.pk).update(webhook_attempts=attempt, last_error=error)
            break
        except httpx2.HTTPError as exc:
            error = f"webhook failed: {exc.__class__.__name__}: {exc}"
        Alert.objects.filter(pk=alert.pk).update(webhook_attempts=attempt, last_error=error[:2000])
    logger.warning("alert webhook failed", extra={"alert_id": alert.pk, "error": error})
    Alert.objects.filter(pk=alert.pk).update(webhook_status=Alert.Delivery.FAILED)
    return Alert.Delivery.FAILED


# --- webhook settings -----------------------------------------------------------------------------
def check_webhook_url(url: str) -> str | None:
    """https or http only, and — unless the operator allows it — no private, loopback, link-local or
    multicast target: a tenant's webhook must not reach into the network Modelgate runs in. Networks in
    MODELGATE_WEBHOOK_ALLOW_NETWORKS are allowed; MODELGATE_WEBHOOK_ALLOW_PRIVATE allows everything.
    Returns the vetted address to connect to (None when everything is allowed and nothing was resolved)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("The webhook URL must be an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise ValidationError("The webhook URL must not carry credentials; verify the signature instead.")
    if settings.MODELGATE_WEBHOOK_ALLOW_PRIVATE:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ValidationError(f"The webhook host {parts.hostname!r} does not resolve.") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not is_public(ip) and not any(ip in network for network in settings.MODELGATE_WEBHOOK_ALLOW_NETWORKS):
            raise ValidationError(f"The webhook host {parts.hostname!r} resolves to a non-public address ({ip}).")
    return addresses[0]


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A global unicast address, and for IPv6 one that embeds no private IPv4 address either: a NAT64,
    6to4, Teredo or IPv4-mapped address of 10.0.0.1 reaches 10.0.0.1."""
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address] = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
        if ip.teredo:
            embedded.extend(ip.teredo)
        if any(ip in network for network in _NAT64) or ip in _IPV4_COMPATIBLE:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(is_public(v4) for v4 in embedded)
    return True


def post_pinned(url: str, address: str | None, *, content: bytes, headers: dict[str, str]) -> httpx2.Response:
    """POST to `url` over a connection to `address`, the one check_webhook_url vetted: a second DNS
    answer (rebinding) cannot send the request elsewhere. The Host header and the TLS server name
    (and so the certificate check) stay the URL's host. No proxy from the environment, no redirects."""
    extensions: dict[str, str] = {}
    if address is not None:
        parts = urlsplit(url)
        host = f"[{address}]" if ":" in address else address
        headers = {**headers, "host": parts.netloc}
        extensions["sni_hostname"] = parts.hostname or ""
        url = urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
    with httpx2.Client(timeout=settings.MODELGATE_WEBHOOK_TIMEOUT, follow_redirects=False, trust_env=False) as client:
        return client.send(client.build_request("POST", url, content=content, headers=headers, extensions=extensions))


def set_webhook(budget: Budget, url: str) -> str | None:
    """Point the budget's alerts at `url` (empty: no webhook); returns the new signing secret, which
    is stored encrypted and shown only now."""
    if not url:
        budget.webhook_url, budget.webhook_secret = "", ""
        return None
    check_webhook_url(url)
    secret = f"whsec_{secrets.token_urlsafe(32)}"
    budget.webhook_url, budget.webhook_secret = url, WEBHOOK_SECRETS.encrypt(secret)
    return secret
