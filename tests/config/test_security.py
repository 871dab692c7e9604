"""Production settings pass Django's deploy check; admin logins are locked out per address and username."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.test import Client

from tests.conftest import ROOT

PASSWORD = "a-long-operator-password-1"


def deploy_check(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "SECRET_KEY": secrets.token_urlsafe(50), "DEBUG": "false", **env}
    for name in ("MODELGATE_SSL_REDIRECT", "MODELGATE_HSTS_SECONDS", "MODELGATE_SECURE_COOKIES", "MODELGATE_HSTS_PRELOAD",
                 "MODELGATE_HSTS_INCLUDE_SUBDOMAINS"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
                          env=environ, capture_output=True, text=True, timeout=120)


def test_production_settings_pass_the_deploy_check_without_a_warning():
    result = deploy_check(MODELGATE_PRODUCTION="true")
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_without_production_the_deploy_check_names_what_is_missing():
    result = deploy_check(MODELGATE_PRODUCTION="false")
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


def test_turning_one_production_setting_off_is_reported():
    result = deploy_check(MODELGATE_PRODUCTION="true", MODELGATE_HSTS_SECONDS="0")
    assert result.returncode != 0 and "security.W004" in result.stderr


def test_production_refuses_debug():
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MODELGATE_PRODUCTION": "1", "DEBUG": "1"})
    assert result.returncode != 0
    assert "DEBUG must be off when MODELGATE_PRODUCTION is on." in result.stderr


@pytest.mark.django_db
def test_https_redirect_spares_the_probes(settings, alice):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    client = Client()  # a new client builds its middleware with these settings
    redirected = client.get("/v1/me", **alice.auth)
    assert redirected.status_code == 301 and redirected["Location"] == "https://testserver/v1/me"
    assert client.get("/health").status_code == 200
    secure = client.get("/v1/me", secure=True, **alice.auth)
    assert secure.status_code == 200 and secure["Strict-Transport-Security"].startswith("max-age=3600")


# --- admin login lockout (django-axes) -------------------------------------------------------------
@pytest.fixture
def operator(db):
    return get_user_model().objects.create_superuser("operator", "", PASSWORD)


def log_in(client: Client, username: str, password: str, address: str):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_failed_admin_logins_lock_out_that_username_from_that_address(operator, settings):
    settings.AXES_FAILURE_LIMIT = 3
    attacker = Client()
    for _ in range(2):
        assert log_in(attacker, "operator", "wrong", "203.0.113.7").status_code == 200  # the form again, with an error
    assert log_in(attacker, "operator", "wrong", "203.0.113.7").status_code == 429
    # Locked now: even the right password from that address is refused, and no session is made.
    locked = log_in(attacker, "operator", PASSWORD, "203.0.113.7")
    assert locked.status_code == 429 and "_auth_user_id" not in attacker.session
    page = locked.content.decode()
    assert "Too many failed logins" in page and "after 3 failed attempts" in page.lower().replace("\n", " ")
    assert "axes_reset_username operator" in page
    # The operator elsewhere, and another username from that address, are not locked out.
    elsewhere = Client()
    response = log_in(elsewhere, "operator", PASSWORD, "198.51.100.20")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert int(elsewhere.session["_auth_user_id"]) == operator.pk
    get_user_model().objects.create_superuser("second", "", PASSWORD)
    assert log_in(Client(), "second", PASSWORD, "203.0.113.7").status_code == 302
    [attempt] = AccessAttempt.objects.filter(username="operator")
    assert attempt.ip_address == "203.0.113.7" and attempt.failures_since_start >= 3


def test_a_successful_login_resets_the_count(operator, settings):
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(2):
        log_in(client, "operator", "wrong", "203.0.113.8")
    assert log_in(client, "operator", PASSWORD, "203.0.113.8").status_code == 302
    client.logout()
    for _ in range(2):
        assert log_in(client, "operator", "wrong", "203.0.113.8").status_code == 200
    assert log_in(client, "operator", PASSWORD, "203.0.113.8").status_code == 302


def test_behind_the_tls_proxy_the_address_the_proxy_appended_is_counted(operator, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.MODELGATE_BEHIND_TLS_PROXY = True
    proxy = "10.0.0.2"

    def through_proxy(forwarded_for: str, password: str):
        return Client().post("/admin/login/?next=/admin/", {"username": "operator", "password": password},
                             REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=forwarded_for)

    # The client's own X-Forwarded-For entries change each time; the proxy's last entry does not.
    assert through_proxy("1.1.1.1, 203.0.113.50", "wrong").status_code == 200
    assert through_proxy("2.2.2.2, 203.0.113.50", "wrong").status_code == 429
    assert through_proxy("203.0.113.50", PASSWORD).status_code == 429
    # Everyone else behind the same proxy still logs in.
    assert through_proxy("198.51.100.4", PASSWORD).status_code == 302
    assert AccessAttempt.objects.get(username="operator").ip_address == "203.0.113.50"


@pytest.mark.parametrize("variable, value, message", [
    ("MODELGATE_PRODUCTION", "perhaps", "MODELGATE_PRODUCTION must be a boolean"),
    ("MODELGATE_HSTS_SECONDS", "-1", "MODELGATE_HSTS_SECONDS must be at least 0"),
    ("MODELGATE_ADMIN_LOGIN_ATTEMPTS", "0", "MODELGATE_ADMIN_LOGIN_ATTEMPTS must be at least 1"),
    ("MODELGATE_ADMIN_LOCKOUT_MINUTES", "soon", "MODELGATE_ADMIN_LOCKOUT_MINUTES must be an integer"),
    ("MODELGATE_RECORD_RETENTION_DAYS", "-3", "MODELGATE_RECORD_RETENTION_DAYS must be at least 0"),
    ("MODELGATE_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/8,intranet", "MODELGATE_WEBHOOK_ALLOW_NETWORKS items are addresses"),
])
def test_a_bad_security_setting_stops_the_process(variable, value, message):
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, variable: value})
    assert result.returncode != 0 and message in result.stderr
