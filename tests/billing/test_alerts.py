"""Budget alerts: once per period and threshold, raised when settlement crosses it (or the budget
refuses), delivered by email and by an HMAC-signed webhook with retries; tenants see only their own."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django_q.models import OrmQ

from billing import alerts
from billing.models import Alert, Budget
from billing.services import crossed_thresholds, reserve, settle
from tests.billing.test_budgets import budget_for
from tests.routing.conftest import post


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that answers with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/budget"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    settings.MODELGATE_WEBHOOK_ALLOW_PRIVATE = True
    settings.MODELGATE_WEBHOOK_RETRY_SECONDS = 0.01
    hook = WebhookReceiver()
    yield hook
    hook.close()


@pytest.fixture(autouse=True)
def fresh_memo():
    alerts._raised.clear()
    yield
    alerts._raised.clear()


def spend(budget: Budget, amount: str, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        settle(reserve(budget, Decimal(amount)), Decimal(amount))


def test_thresholds_are_crossed_once_each():
    assert crossed_thresholds([50, 80, 100], before=Decimal("0.4"), after=Decimal("0.85"), limit=Decimal("1")) == [50, 80]
    assert crossed_thresholds([50, 80, 100], before=Decimal("0.5"), after=Decimal("0.6"), limit=Decimal("1")) == []
    assert crossed_thresholds([100], before=Decimal("0.9"), after=Decimal("1"), limit=Decimal("1")) == [100]


def test_settlement_raises_each_crossed_threshold_once_and_queues_its_delivery(tenant_a, django_capture_on_commit_callbacks):
    budget = budget_for(tenant_a, "1.0")
    spend(budget, "0.3", django_capture_on_commit_callbacks)
    assert Alert.objects.count() == 0
    spend(budget, "0.55", django_capture_on_commit_callbacks)  # 0.3 → 0.85 crosses 50 and 80
    assert sorted(Alert.objects.values_list("threshold", flat=True)) == [50, 80]
    alert = Alert.objects.get(threshold=80)
    assert (alert.spent, alert.limit, alert.period_start) == (Decimal("0.85"), Decimal("1"), budget.period_start)
    assert OrmQ.objects.count() == 2  # one delivery task each, for the background cluster
    spend(budget, "0.1", django_capture_on_commit_callbacks)
    alerts._raised.clear()  # another process, without this one's memory: the database still says no
    assert alerts.raise_alerts(budget_id=budget.pk, tenant_id=tenant_a.pk, period_start=budget.period_start,
                               thresholds=[50, 80], spent=Decimal("0.95"), limit=budget.limit) == []
    assert Alert.objects.count() == 2


def test_a_refused_request_raises_the_last_threshold(api, alice, starter):
    budget_for(alice.tenant, "0", period=Budget.Period.DAILY)
    for _ in range(3):
        assert post(api, "/v1/detect-language", {"text": "Bonjour tout le monde"}, alice).status_code == 402
    assert list(Alert.objects.values_list("threshold", flat=True)) == [100]


def test_the_webhook_is_signed_and_retried_until_it_is_taken(api, alice, receiver, django_capture_on_commit_callbacks):
    budget = budget_for(alice.tenant, "1.0")
    response = api.patch("/v1/budget", {"webhook_url": receiver.url}, format="json", **alice.auth)
    assert response.status_code == 200
    secret = response.json()["webhook_secret"]
    budget.refresh_from_db()
    assert secret.startswith("whsec_") and secret not in budget.webhook_secret  # stored encrypted
    assert "webhook_secret" not in json.dumps(api.get("/v1/budget", **alice.auth).json())

    spend(budget, "0.6", django_capture_on_commit_callbacks)
    alert = Alert.objects.get()
    receiver.statuses = [500, 503]
    assert alerts.deliver(alert.pk) == {"email": "skipped", "webhook": "sent"}
    alert.refresh_from_db()
    assert (alert.webhook_status, alert.webhook_attempts) == ("sent", 3)
    headers, body = receiver.received[-1]
    expected = hmac.new(secret.encode(), headers["x-modelgate-timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-modelgate-signature"] == f"v1={expected}"
    payload = json.loads(body)
    assert (payload["type"], payload["tenant"], payload["threshold_percent"], payload["spent"]) == (
        "budget.threshold_crossed", "alpha", 50, "0.600000000000")


def test_a_webhook_that_keeps_failing_is_marked_failed_after_the_last_attempt(alice, receiver, settings,
                                                                              django_capture_on_commit_callbacks):
    settings.MODELGATE_WEBHOOK_ATTEMPTS = 3
    budget = budget_for(alice.tenant, "1.0")
    alerts.set_webhook(budget, receiver.url)
    budget.save()
    spend(budget, "0.6", django_capture_on_commit_callbacks)
    receiver.statuses = [500] * 5
    alert = Alert.objects.get()
    assert alerts.deliver(alert.pk)["webhook"] == "failed"
    alert.refresh_from_db()
    assert (alert.webhook_attempts, len(receiver.received)) == (3, 3)
    assert "500" in alert.last_error


def test_email_goes_out_when_configured(alice, settings, django_capture_on_commit_callbacks):
    settings.MODELGATE_ALERT_EMAILS = True
    budget = budget_for(alice.tenant, "1.0", alert_email="billing@alpha.example")
    spend(budget, "0.9", django_capture_on_commit_callbacks)
    for alert in Alert.objects.all():
        alerts.deliver(alert.pk)
    assert sorted(m.subject for m in mail.outbox) == [
        "Modelgate: alpha has used 50% of its monthly budget", "Modelgate: alpha has used 80% of its monthly budget"]
    assert mail.outbox[0].to == ["billing@alpha.example"]
    assert set(Alert.objects.values_list("email_status", flat=True)) == {"sent"}


def test_email_is_skipped_without_an_email_setup(alice, settings, django_capture_on_commit_callbacks):
    settings.MODELGATE_ALERT_EMAILS = False
    budget = budget_for(alice.tenant, "1.0", alert_email="billing@alpha.example")
    spend(budget, "0.6", django_capture_on_commit_callbacks)
    assert alerts.deliver(Alert.objects.get().pk) == {"email": "skipped", "webhook": "skipped"}
    assert mail.outbox == []


def test_webhooks_may_not_point_inside_the_network(api, alice, settings):
    settings.MODELGATE_WEBHOOK_ALLOW_PRIVATE = False
    budget_for(alice.tenant, "1.0")
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.8/hook", "http://169.254.169.254/latest", "ftp://example.com/x",
                "http://user:pw@example.com/hook"):
        response = api.patch("/v1/budget", {"webhook_url": url}, format="json", **alice.auth)
        assert response.status_code == 400, url
        assert response.json()["error"]["code"] == "invalid_request"
    assert Budget.objects.get(tenant=alice.tenant).webhook_url == ""


def test_a_webhook_goes_to_the_address_that_was_vetted_not_to_a_second_dns_answer(receiver, settings, monkeypatch):
    from billing.alerts import check_webhook_url, post_pinned

    real_getaddrinfo = socket.getaddrinfo
    settings.MODELGATE_WEBHOOK_ALLOW_PRIVATE = False
    answers = iter(["93.184.215.14", "127.0.0.1"])  # public when checked, loopback when asked again (rebinding)
    monkeypatch.setattr("socket.getaddrinfo", lambda host, port, **kw: [(2, 1, 6, "", (next(answers), port))])
    url = f"http://hooks.alpha.example:{receiver.server.server_port}/hooks/budget"
    assert check_webhook_url(url) == "93.184.215.14"
    with pytest.raises(ValidationError, match="non-public address"):
        check_webhook_url(url)
    # Sent to the vetted address (here the receiver on loopback), never resolved again, with the URL's Host.
    def only_addresses(host, *args, **kwargs):
        assert host != "hooks.alpha.example", "the webhook host was resolved again"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr("socket.getaddrinfo", only_addresses)
    response = post_pinned(url, "127.0.0.1", content=b"{}", headers={"content-type": "application/json"})
    assert response.status_code == 200
    [(headers, body)] = receiver.received
    assert headers["host"] == f"hooks.alpha.example:{receiver.server.server_port}" and body == b"{}"


def test_alert_settings_need_a_full_key_and_a_budget(api, alice, alice_limited, bob):
    budget_for(alice.tenant, "1.0")
    assert api.patch("/v1/budget", {"alert_email": "a@b.example"}, format="json", **alice_limited.auth).status_code == 403
    assert api.patch("/v1/budget", {"alert_email": "a@b.example"}, format="json", **bob.auth).status_code == 404
    assert api.patch("/v1/budget", {}, format="json", **alice.auth).status_code == 400
    assert api.patch("/v1/budget", {"alert_email": "not an email"}, format="json", **alice.auth).status_code == 400
    assert api.patch("/v1/budget", {"rotate_webhook_secret": True}, format="json", **alice.auth).status_code == 400
    ok = api.patch("/v1/budget", {"alert_email": "a@b.example"}, format="json", **alice.auth)
    assert ok.status_code == 200 and ok.json()["alert_email"] == "a@b.example"
    assert api.get("/v1/budget", **alice.auth).json()["budget"]["alert_email"] == "a@b.example"


def test_tenants_see_only_their_own_alerts(api, alice, bob, django_capture_on_commit_callbacks):
    spend(budget_for(alice.tenant, "1.0"), "0.6", django_capture_on_commit_callbacks)
    mine = api.get("/v1/alerts", **alice.auth).json()
    assert [a["threshold"] for a in mine] == [50]
    assert api.get("/v1/alerts", **bob.auth).json() == []


def test_one_large_request_refused_by_a_roomy_budget_is_no_alert(api, alice, starter, fake_providers):
    from tests.billing.test_budgets import CHAT
    from tests.routing.test_premium_routing import premium

    premium("gpt-fake", "generation", fake_providers, input="0", output="1")
    budget_for(alice.tenant, "0.05")  # the hold of 0.1 does not fit, though nothing is spent
    assert post(api, "/v1/chat/completions", CHAT, alice).status_code == 402
    assert Alert.objects.count() == 0
