"""What API-key authentication adds to a request: /v1/me (key lookup + scope check) vs /health, side by side."""
from __future__ import annotations

import re
from collections import Counter

from harness import Table, median_rate

REQUESTS, ROUNDS = 500, 5
QUERY_SAMPLES = 10  # requests whose queries are counted, after the timed rounds


def _queries(client, path: str, headers: dict[str, str]) -> tuple[int, list[str]]:
    """The most common number of queries over QUERY_SAMPLES requests, and the SQL of one request with that
    count (a key's last_used_at write, once a minute, would otherwise land in one sample now and then)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    samples = []
    for _ in range(QUERY_SAMPLES):
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path, **headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.content[:300]!r}")
        samples.append([query["sql"] for query in captured.captured_queries])
    count = Counter(map(len, samples)).most_common(1)[0][0]
    return count, next(sql for sql in samples if len(sql) == count)


def _tables(statements: list[str]) -> str:
    """The tables each statement reads, e.g. `tenants_apikey + tenants_tenant`."""
    described = [" + ".join(dict.fromkeys(re.findall(r'(?:FROM|JOIN|UPDATE|INTO) "(\w+)"', sql))) or sql[:40] for sql in statements]
    return "; ".join(described) or "none"


def run() -> Table:
    from django.conf import settings
    from django.test import Client, override_settings

    from tenants import services
    from tenants.serializers import ApiKeySerializer, TenantSerializer

    tenant = services.create_tenant(slug="bench", name="Bench")
    _, secret = services.issue_api_key(tenant=tenant, name="bench")
    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert client.get("/v1/me", **headers).status_code == 200  # warm up, and write last_used_at once
    cache_seconds = settings.MODELGATE_KEY_CACHE_SECONDS

    health_rate, health_ms = median_rate(lambda: client.get("/health"), count=REQUESTS, rounds=ROUNDS)
    me_rate, me_ms = median_rate(lambda: client.get("/v1/me", **headers), count=REQUESTS, rounds=ROUNDS)
    health_queries, health_sql = _queries(client, "/health", {})
    me_queries, me_sql = _queries(client, "/v1/me", headers)
    with override_settings(MODELGATE_KEY_CACHE_SECONDS=0):
        lookup_rate, lookup_ms = median_rate(lambda: client.get("/v1/me", **headers), count=REQUESTS, rounds=ROUNDS)
        lookup_queries, lookup_sql = _queries(client, "/v1/me", headers)
    return Table(
        title="Authentication overhead (in-process WSGI, one thread)",
        columns=["endpoint", "requests/s (median)", "p50 latency ms", "queries"],
        rows=[
            ["/health (no key)", health_rate, health_ms, health_queries],
            [f"/v1/me (API key verified in the last {cache_seconds:g} s)", me_rate, me_ms, me_queries],
            ["/v1/me (API key looked up: MODELGATE_KEY_CACHE_SECONDS=0)", lookup_rate, lookup_ms, lookup_queries],
            ["/v1/me (key verified lately) − /health: DRF, authentication from the recent keys, scope and rate-limit "
             "checks, the tenant and key serialized", "", me_ms - health_ms, me_queries - health_queries],
            ["looking the key up: /v1/me (key looked up) − /v1/me (key verified lately)", "", lookup_ms - me_ms,
             lookup_queries - me_queries],
        ],
        notes=[
            f"{REQUESTS} requests × {ROUNDS} rounds each, medians; Django test client, embedded PostgreSQL over a Unix socket.",
            f"Queries: the most common count over {QUERY_SAMPLES} requests after the timed rounds (a key's last_used_at "
            f"write, at most once every MODELGATE_KEY_LAST_USED_RESOLUTION, is not counted). /health: {_tables(health_sql)}; "
            f"/v1/me, key verified lately: {_tables(me_sql)}; key looked up: {_tables(lookup_sql)}.",
            f"/health is a plain Django view behind the same middleware. /v1/me adds, with a key verified in the last "
            f"MODELGATE_KEY_CACHE_SECONDS ({cache_seconds:g} s): DRF's request handling (the Request wrapper, content "
            "negotiation, JSON rendering), authentication itself (parsing the header, the secret's SHA-256, a private "
            "copy of the kept key and tenant rows, expiry, revocation and tenant status checks), the scope permission, "
            "the request-rate throttle (no query for a key and tenant without limits) and MeSerializer: the tenant "
            f"({len(TenantSerializer.Meta.fields)} fields) and the key ({len(ApiKeySerializer.Meta.fields)} fields). Looking the key up adds the query above and the constant-time "
            "comparison of the secret's digest.",
        ],
    )
