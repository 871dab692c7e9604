"""The base every test builds on: tenant A with a full key and a narrower one, and tenant B who must see nothing of A."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiKey, Scope, Tenant


@dataclass
class Caller:
    tenant: Tenant
    key: ApiKey
    secret: str

    @property
    def auth(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.secret}"}


def make_caller(tenant: Tenant, name: str, scopes: list[str] | None = None) -> Caller:
    key, secret = services.issue_api_key(tenant=tenant, name=name, scopes=scopes)
    return Caller(tenant=tenant, key=key, secret=secret)


ROOT = Path(__file__).resolve().parent.parent
MODEL_SERVER_READY_SECONDS = 90


@pytest.fixture(scope="session", autouse=True)
def model_server(tmp_path_factory):
    """Routing and API tests reach local models as web workers do in production: through a real model
    server (`manage.py modelserver`, a process of its own) on a unix socket. The inference backends
    are tested in process, as the library they are (tests/inference)."""
    from inference.client import ModelServerUnavailable, RemotePool
    from registry import services as registry_services

    address = f"unix://{tmp_path_factory.mktemp('models') / 'models.sock'}"
    process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "modelserver", "--address", address],
                               cwd=ROOT, env={**os.environ, "MODELGATE_LOG_LEVEL": "WARNING"})
    pool = RemotePool(address)
    deadline = time.monotonic() + MODEL_SERVER_READY_SECONDS
    while True:
        try:
            pool.ping()
            break
        except ModelServerUnavailable:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"The test model server did not start (exit {process.poll()}).") from None
            time.sleep(0.2)
    registry_services._pool = registry_services.fleet([address])  # as web workers reach their model servers
    yield process
    registry_services._pool = None
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def tenant_a(db) -> Tenant:
    return services.create_tenant(slug="alpha", name="Alpha Corp")


@pytest.fixture
def tenant_b(db) -> Tenant:
    return services.create_tenant(slug="bravo", name="Bravo Ltd")


@pytest.fixture
def alice(tenant_a: Tenant) -> Caller:
    """Tenant A, every scope."""
    return make_caller(tenant_a, "alice")


@pytest.fixture
def alice_limited(tenant_a: Tenant) -> Caller:
    """Tenant A again, a key that may only chat."""
    return make_caller(tenant_a, "alice-chat-only", scopes=[Scope.CHAT])


@pytest.fixture
def bob(tenant_b: Tenant) -> Caller:
    """Tenant B, every scope: must never see A's data."""
    return make_caller(tenant_b, "bob")


@pytest.fixture(autouse=True)
def fresh_routing_cache():
    """Rolled-back test data never fires the signals that clear the routing cache: start each test empty."""
    from core.recent import configuration

    configuration.forget()
    yield
    configuration.forget()


@pytest.fixture(autouse=True)
def no_key_cache():
    """Tests change keys, tenants and collections with update() and expect the very next request to see it,
    which the per-process caches by design do not; their own tests, and the pin of a premium request's
    queries, turn them on. Search records are written in the request: a test's transaction is not
    visible to the background writer's connection (tests/config/test_telemetry.py runs that one)."""
    from embeddings.services import recent_collections
    from tenants.authentication import recent_keys

    recent_keys.forget()
    recent_collections.forget()
    with override_settings(MODELGATE_KEY_CACHE_SECONDS=0, MODELGATE_COLLECTION_CACHE_SECONDS=0, MODELGATE_TELEMETRY_BACKGROUND=False):
        yield
    recent_keys.forget()
    recent_collections.forget()


@pytest.fixture
def key_cache(settings):
    """The key cache as it runs in production, on a clock the test moves."""
    from tenants.authentication import recent_keys

    settings.MODELGATE_KEY_CACHE_SECONDS = 2
    clock = ManualClock()
    recent_keys.clock = clock
    yield clock
    recent_keys.clock = time.monotonic


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """MODELGATE_TEST_DB_SUFFIX gives a run its own test database, so that two runs can share one
    PostgreSQL server (a benchmark beside the suite, two checkouts) without dropping each other's."""
    suffix = os.environ.get("MODELGATE_TEST_DB_SUFFIX", "")
    if not suffix:
        return
    for db_settings in settings.DATABASES.values():
        test = db_settings.setdefault("TEST", {})
        test["NAME"] = f"{test.get('NAME') or 'test_' + db_settings['NAME']}_{suffix}"


@pytest.fixture
def starter(db) -> dict:
    """The starter pack registered: the real packaged models, by slug."""
    from registry import services as registry_services
    from registry.models import ModelSpec

    registry_services.register_starter_pack()
    return {spec.slug: spec for spec in ModelSpec.objects.all()}


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Leave the machine as we found it: stop the embedded server if this test run started it.
    choice = getattr(settings, "DATABASE_CHOICE", None)
    if choice is not None and choice.embedded and choice.started_here:
        from django.db import connections

        from config.db import stop_embedded

        connections.close_all()
        stop_embedded(settings.PGDATA)
