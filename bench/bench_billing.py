"""What billing costs on the request path: POST /v1/detect-language (a local fastText model, cheap enough
that the billing queries show) for a tenant without any limit, one with a budget (reservation and
settlement: what the target is about), and one with everything on (budget, a per-key spending limit,
request and token rate limits on key and tenant), measured side by side in interleaved rounds."""
from __future__ import annotations

import itertools
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

from harness import Table, corpus

REQUESTS, ROUNDS = 300, 7
TARGET_SLOWDOWN = 0.15
NEVER = 1_000_000  # a limit far above anything this benchmark reaches
WRITE = re.compile(r"\b(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def run() -> Table:
    from django.test import Client

    from billing.models import Budget, RateCounter, SpendLimit
    from registry.services import register_starter_pack
    from tenants import services

    register_starter_pack()
    texts = itertools.cycle(corpus(200))

    free = services.create_tenant(slug="bench-free", name="No budget, no rate limits")
    _, free_secret = services.issue_api_key(tenant=free, name="bench")
    budgeted = services.create_tenant(slug="bench-budget", name="A budget")
    _, budget_secret = services.issue_api_key(tenant=budgeted, name="bench")
    budget_only = Budget.objects.create(tenant=budgeted, limit=Decimal(NEVER))
    billed = services.create_tenant(slug="bench-billed", name="Budget, key sub-limit, rate limits")
    billed.rpm_limit = billed.tpm_limit = NEVER
    billed.save()
    billed_key, billed_secret = services.issue_api_key(tenant=billed, name="bench", rpm_limit=NEVER, tpm_limit=NEVER)
    budget = Budget.objects.create(tenant=billed, limit=Decimal(NEVER))
    SpendLimit.objects.create(budget=budget, api_key=billed_key, limit=Decimal(NEVER))

    client = Client()
    modes = {"off": free_secret, "budget": budget_secret, "all": billed_secret}

    def call(mode: str) -> None:
        body = json.dumps({"text": next(texts)})
        response = client.post("/v1/detect-language", body, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {modes[mode]}")
        if response.status_code != 200:
            raise RuntimeError(f"billing {mode}: {response.status_code} {response.content[:500]!r}")

    for mode in modes:  # load the model, fill the routing cache, write last_used_at once
        for _ in range(20):
            call(mode)

    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    orders = list(itertools.permutations(modes))
    for round_number in range(ROUNDS):
        # Rotate the order, so that no mode always runs on a warmer (or busier) machine.
        for mode in orders[round_number % len(orders)]:
            started = time.perf_counter()
            for _ in range(REQUESTS):
                t0 = time.perf_counter()
                call(mode)
                latencies[mode].append(time.perf_counter() - t0)
            rates[mode].append(REQUESTS / (time.perf_counter() - started))

    queries = {mode: typical_queries(lambda: call(mode)) for mode in modes}
    token_counters = sum("'tokens:" in sql for sql in queries["all"])

    # Each mode measured what it claims: money held and settled (and requests counted) with billing on,
    # no billing statement at all with it off.
    for row in (budget_only, budget):
        row.refresh_from_db()
        if not (row.spent > 0 and row.reserved == 0):
            raise RuntimeError(f"A billed tenant's requests were not billed: {row}.")
    if not RateCounter.objects.filter(bucket=f"key:{billed_key.pk}").exists():
        raise RuntimeError("The billed key's requests were not counted by the rate limiter.")
    if any(statement_kind(sql).startswith("billing_") for sql in queries["off"]):
        raise RuntimeError(f"Billing queries ran for the tenant without limits: {queries['off']}")

    rate = {mode: statistics.median(rates[mode]) for mode in modes}
    p50 = {mode: statistics.median(latencies[mode]) * 1000 for mode in modes}
    slowdown = {mode: 1 - rate[mode] / rate["off"] for mode in modes}

    def added(mode: str) -> str:
        extra = Counter(map(statement_kind, queries[mode])) - Counter(map(statement_kind, queries["off"]))
        return ", ".join(f"{kind} × {count}" for kind, count in sorted(extra.items())) or "none"

    labels = {
        "off": "off: no budget, no rate limits",
        "budget": "budget: reservation + settlement",
        "all": "everything: budget + key sub-limit + rpm and tpm limits (key and tenant)",
    }
    rows = [
        [labels[mode], rate[mode], p50[mode], "" if mode == "off" else f"{slowdown[mode]:.1%}", len(queries[mode]),
         commits(queries[mode])]
        for mode in modes
    ]
    met = slowdown["budget"] <= TARGET_SLOWDOWN
    return Table(
        title="Billing on the request path — POST /v1/detect-language (in-process WSGI, one thread)",
        columns=["billing", "requests/s (median)", "p50 latency ms", "slower than off", "queries per request",
                 "commits per request"],
        rows=rows,
        notes=[
            f"{REQUESTS} requests × {ROUNDS} rounds per mode in rotating order, medians; Django test client through "
            "the whole stack (middleware, DRF authentication and throttle, router, fastText lid.176), embedded "
            "PostgreSQL over a Unix socket. Real English sentences, one per request.",
            "Queries: the most common count over 10 requests after warm-up (the routing configuration is cached; "
            "a key's last_used_at write once a minute is not counted). The hold rides in the statement that inserts "
            "the pending record, the settlement in the one that completes it. Added over off — budget: "
            f"{added('budget')}; everything: {added('all')} (token-rate counters among them: {token_counters}; "
            "language identification is metered in characters, not tokens; rate counters commit without "
            "waiting for the disk).",
            "Commits: write transactions per request; each synchronous one waits for its WAL flush.",
            f"Target: reservation + settlement at most {TARGET_SLOWDOWN:.0%} slower than off — "
            f"{'met' if met else 'NOT met'} ({slowdown['budget']:.1%}).",
        ],
    )


def typical_queries(action: Callable[[], object]) -> list[str]:
    """The SQL of one request whose query count is the most common over 10 requests."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    captured = []
    for _ in range(10):
        with CaptureQueriesContext(connection) as queries:
            action()
        captured.append([query["sql"] for query in queries.captured_queries])
    typical = Counter(len(sqls) for sqls in captured).most_common(1)[0][0]
    return next(sqls for sqls in captured if len(sqls) == typical)


def commits(sqls: list[str]) -> int:
    """Write transactions among a request's statements: what waits for the disk (synchronous_commit)."""
    count, in_transaction = 0, False
    for sql in sqls:
        verb = sql.split(None, 1)[0].upper()
        if verb == "BEGIN":
            in_transaction = True
        elif verb == "COMMIT":
            in_transaction = False
            count += 1
        elif not in_transaction and WRITE.search(sql):
            count += 1
    return count


def statement_kind(sql: str) -> str:
    """The table a statement works on, or BEGIN/COMMIT for transaction control. A statement that moves
    money in a WITH clause is named after the row it writes, with what rides along."""
    verb = sql.split(None, 1)[0].upper()
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return "BEGIN/COMMIT"
    if verb == "WITH":
        written = re.findall(r'\b(?:INSERT\s+INTO|UPDATE)\s+"?(\w+)', sql, re.IGNORECASE)
        riders = sorted(set(written[:-1]) - {written[-1]})
        return f"{written[-1]} (+ {', '.join(riders)})" if written else verb
    table = re.search(r'\b(?:FROM|INTO|UPDATE)\s+"?(\w+)', sql, re.IGNORECASE)
    return table[1] if table else verb
