"""What API-key authentication adds to a request: /v1/me (key lookup + scope check) vs /health, side by side."""
from __future__ import annotations

from harness import Table, median_rate

REQUESTS, ROUNDS = 500, 5


def run() -> Table:
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from tenants import services

    tenant = services.create_tenant(slug="bench", name="Bench")
    _, secret = services.issue_api_key(tenant=tenant, name="bench")
    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert client.get("/v1/me", **headers).status_code == 200  # warm up, and write last_used_at once

    health_rate, health_ms = median_rate(lambda: client.get("/health"), count=REQUESTS, rounds=ROUNDS)
    me_rate, me_ms = median_rate(lambda: client.get("/v1/me", **headers), count=REQUESTS, rounds=ROUNDS)
    with CaptureQueriesContext(connection) as queries:
        client.get("/v1/me", **headers)
    with override_settings(MODELGATE_KEY_CACHE_SECONDS=0):
        lookup_rate, lookup_ms = median_rate(lambda: client.get("/v1/me", **headers), count=REQUESTS, rounds=ROUNDS)
        with CaptureQueriesContext(connection) as lookup_queries:
            client.get("/v1/me", **headers)
    return Table(
        title="Authentication overhead (in-process WSGI, one thread)",
        columns=["endpoint", "requests/s (median)", "p50 latency ms", "queries"],
        rows=[
            ["/health (no key)", health_rate, health_ms, 0],
            ["/v1/me (API key verified lately)", me_rate, me_ms, len(queries)],
            ["/v1/me (API key looked up: MODELGATE_KEY_CACHE_SECONDS=0)", lookup_rate, lookup_ms, len(lookup_queries)],
            ["added by authentication (key verified lately)", "", me_ms - health_ms, len(queries)],
        ],
        notes=[
            f"{REQUESTS} requests × {ROUNDS} rounds each, medians; Django test client, embedded PostgreSQL over a Unix socket.",
            "A key verified in the last MODELGATE_KEY_CACHE_SECONDS (2 s) costs no query; a busy key is looked up "
            "once per window. The lookup itself is the difference between the two /v1/me rows; what /v1/me adds "
            "beyond it is mostly DRF, with the serializers of the key and tenant it answers with.",
        ],
        command="make bench BENCH=auth",
    )
