"""Where a tenant's webhook may point: public addresses only (unless the operator allows a network or
everything), checked when it is set (400) and again when an alert is sent, after resolving the name,
and the request goes to the address that was checked (no second DNS answer: rebinding)."""
from __future__ import annotations

import ipaddress
import socket

import pytest

from billing import alerts
from billing.models import Alert, Budget
from tests.billing.test_alerts import WebhookReceiver, fresh_memo, spend  # noqa: F401  (fixture)
from tests.billing.test_budgets import budget_for

HOST = "hooks.alpha.example"


@pytest.mark.parametrize("address, public", [
    ("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.9", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.251", False), ("239.1.1.1", False),
    ("::1", False), ("fe80::1", False), ("fd00::5", False), ("ff02::1", False),
    # IPv6 spellings of private IPv4 addresses
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("64:ff9b::a00:1", False), ("64:ff9b::7f00:1", False),
    ("2002:a00:1::1", False), ("::127.0.0.1", False), ("64:ff9b::5db8:d70e", True),
])
def test_what_counts_as_public(address, public):
    assert alerts.is_public(ipaddress.ip_address(address)) is public


@pytest.fixture
def dns(monkeypatch):
    """Answers for HOST, set by the test; every other name resolves as usual."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != HOST:
            return real(host, port, *args, **kwargs)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr("socket.getaddrinfo", getaddrinfo)
    return answers


@pytest.fixture
def receiver(settings):
    settings.MODELGATE_WEBHOOK_ALLOW_PRIVATE = False
    settings.MODELGATE_WEBHOOK_RETRY_SECONDS = 0.01
    settings.MODELGATE_WEBHOOK_ATTEMPTS = 2
    hook = WebhookReceiver()
    yield hook
    hook.close()


def hook_url(receiver: WebhookReceiver) -> str:
    return f"http://{HOST}:{receiver.server.server_port}/hooks/budget"


@pytest.mark.parametrize("address", ["10.0.0.8", "::ffff:169.254.169.254", "64:ff9b::a00:8", "224.0.0.1"])
def test_setting_a_name_that_resolves_inside_is_a_400_and_nothing_is_stored(api, alice, receiver, dns, address):
    budget_for(alice.tenant, "1.0")
    dns.append(address)
    response = api.patch("/v1/budget", {"webhook_url": hook_url(receiver)}, format="json", **alice.auth)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "non-public address" in error["message"]
    assert Budget.objects.filter(tenant=alice.tenant).values_list("webhook_url", "webhook_secret").get() == ("", "")


def test_an_allowed_network_may_be_reached_and_the_alert_goes_to_the_checked_address(
        api, alice, receiver, dns, settings, django_capture_on_commit_callbacks):
    settings.MODELGATE_WEBHOOK_ALLOW_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
    budget = budget_for(alice.tenant, "1.0")
    dns.append("127.0.0.1")
    response = api.patch("/v1/budget", {"webhook_url": hook_url(receiver)}, format="json", **alice.auth)
    assert response.status_code == 200 and response.json()["webhook_secret"].startswith("whsec_")
    spend(budget, "0.6", django_capture_on_commit_callbacks)
    assert alerts.deliver(Alert.objects.get().pk)["webhook"] == "sent"
    [(headers, _)] = receiver.received
    assert headers["host"] == f"{HOST}:{receiver.server.server_port}"
    # Another private network stays closed.
    dns[:] = ["10.0.0.8"]
    assert api.patch("/v1/budget", {"webhook_url": f"http://{HOST}/other"}, format="json", **alice.auth).status_code == 400


def test_a_name_that_turns_private_after_it_was_set_gets_nothing_at_send_time(
        api, alice, receiver, dns, settings, django_capture_on_commit_callbacks):
    settings.MODELGATE_WEBHOOK_ALLOW_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]
    budget = budget_for(alice.tenant, "1.0")
    dns.append("127.0.0.1")
    assert api.patch("/v1/budget", {"webhook_url": hook_url(receiver)}, format="json", **alice.auth).status_code == 200
    # The operator closes the network (or the name now answers an internal address) before the alert goes out.
    settings.MODELGATE_WEBHOOK_ALLOW_NETWORKS = []
    spend(budget, "0.6", django_capture_on_commit_callbacks)
    alert = Alert.objects.get()
    assert alerts.deliver(alert.pk)["webhook"] == "failed"
    alert.refresh_from_db()
    assert alert.webhook_status == "failed" and alert.webhook_attempts == 1  # refused: not retried
    assert "non-public address (127.0.0.1)" in alert.last_error
    assert receiver.received == []


def test_everything_allowed_reaches_loopback(api, alice, receiver, settings):
    settings.MODELGATE_WEBHOOK_ALLOW_PRIVATE = True
    budget_for(alice.tenant, "1.0")
    response = api.patch("/v1/budget", {"webhook_url": f"http://127.0.0.1:{receiver.server.server_port}/x"}, format="json",
                         **alice.auth)
    assert response.status_code == 200
