"""Faults only real processes can show: the database stopped under traffic, and a web worker killed in
the middle of requests. Each test runs a real Modelgate (gunicorn) on an embedded PostgreSQL of its own
(tests/faults/servers.py): stopping that server, or killing that worker, touches nothing else."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.billing.servers import Reply
from tests.faults.conftest import TricklingProviderServer, wait_until, words_reply
from tests.faults.servers import Modelgate, OwnPostgres, reap_everything, records_and_budget, set_up_tenant

OUTAGE_SECONDS = 4.0
CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 100}


@pytest.fixture(scope="module")
def provider() -> Iterator[TricklingProviderServer]:
    with TricklingProviderServer(gap=0.0) as server:
        yield server


@pytest.fixture(scope="module")
def database(provider) -> Iterator[OwnPostgres]:
    own = OwnPostgres()
    try:
        own.key = set_up_tenant(own, provider.openai_base_url)
        yield own
    finally:
        own.close()


def test_a_database_outage_is_a_503_to_retry_and_modelgate_recovers_without_a_restart(database, provider):
    provider.normal()
    provider.gap = 0.0
    server = Modelgate(database)
    replies: dict[str, tuple[float, Reply]] = {}  # request id: (when it was sent, the reply)
    stopping = threading.Event()

    def traffic(lane: int) -> None:
        sent = 0
        while not stopping.is_set():
            request_id = f"outage-{lane}-{sent:05d}"
            started = time.monotonic()
            replies[request_id] = (started, server.request("POST", "/v1/chat/completions", key=database.key, body=CHAT,
                                                           request_id=request_id, timeout=30))
            sent += 1
            time.sleep(0.02)

    try:
        workers = server.worker_pids()
        lanes = [threading.Thread(target=traffic, args=(lane,)) for lane in range(3)]
        for lane in lanes:
            lane.start()
        time.sleep(1.0)
        database.stop()
        time.sleep(OUTAGE_SECONDS)
        database.start()
        back = time.monotonic()
        recovered = wait_until(lambda: any(started > back and reply.status == 200 for started, reply in list(replies.values())))
        time.sleep(0.5)
        stopping.set()
        for lane in lanes:
            lane.join(timeout=60)
        assert recovered, sorted({reply.status for _, reply in replies.values()})
        # Recovered in the same processes: Django dropped the broken connections and opened new ones.
        assert server.proc.poll() is None and server.worker_pids() == workers
    finally:
        stopping.set()
        server.stop()

    statuses = {request_id: reply.status for request_id, (_, reply) in replies.items()}
    assert set(statuses.values()) <= {200, 503}, {s for s in statuses.values()}
    refused = [reply for _, reply in replies.values() if reply.status == 503]
    assert refused, "no request met the outage"
    for request_id, (_, reply) in replies.items():
        if reply.status == 503:
            assert reply.body == {"error": {"code": "database_unavailable", "request_id": request_id,
                                            "message": "The database cannot be reached right now; retry shortly."}}
            assert reply.headers["retry-after"] == "5"
    last = max(replies.items(), key=lambda item: item[1][0])
    assert last[1][1].status == 200

    # No admitted request without its record: every answer has its completed record, every call that
    # reached the provider was admitted first, and once the reaper has run nothing is pending or held.
    reap_everything(database)
    state = records_and_budget(database)
    by_request = {}
    for row in state["records"]:
        by_request.setdefault(row["request_id"], []).append(row)
    answered = [request_id for request_id, status in statuses.items() if status == 200]
    assert all([row["status"] for row in by_request.get(request_id, [])] == ["ok"] for request_id in answered)
    assert len(provider.requests_to("/v1/chat/completions")) <= len(state["records"])
    assert all(row["status"] in ("ok", "abandoned") for row in state["records"])
    assert Decimal(state["reserved"]) == 0
    assert Decimal(state["spent"]) == sum(Decimal(row["cost"]) for row in state["records"])


def test_a_worker_killed_mid_request_leaves_records_the_reaper_closes_and_a_stream_is_charged(database, provider):
    provider.normal()
    provider.gap = 0.25
    provider.reply(words_reply(80))  # a stream of 20 s
    server = Modelgate(database)
    plain_reply: list[object] = []
    try:
        [worker] = server.worker_pids()
        before = len(provider.requests_to("/v1/chat/completions"))
        provider.slow(60, times=1)  # the plain request's provider answers late: the worker dies waiting for it

        def plain() -> None:
            try:
                plain_reply.append(server.request("POST", "/v1/chat/completions", key=database.key, body=CHAT,
                                                  request_id="killed-plain", timeout=90))
            except OSError as exc:
                plain_reply.append(exc)

        waiting = threading.Thread(target=plain)
        waiting.start()
        assert wait_until(lambda: len(provider.requests_to("/v1/chat/completions")) == before + 1)

        request = urllib.request.Request(
            server.base + "/v1/chat/completions", data=json.dumps({**CHAT, "stream": True}).encode(), method="POST",
            headers={"Authorization": f"Bearer {database.key}", "Content-Type": "application/json",
                     "x-request-id": "killed-stream"})
        stream = urllib.request.urlopen(request, timeout=30)
        started, pieces = time.monotonic(), 0
        while time.monotonic() - started < 7.0:  # past the first progress write (every 5 s)
            line = stream.readline()
            assert line, "the stream ended early"
            pieces += line.startswith(b"data: {")
        assert pieces > 10

        os.kill(worker, signal.SIGKILL)  # as the OOM killer would
        waiting.join(timeout=90)
        stream.close()
        assert plain_reply and not (isinstance(plain_reply[0], Reply) and plain_reply[0].status == 200)
        assert wait_until(lambda: provider.streams_open == 0), "the provider is still streaming to a dead worker"
    finally:
        server.stop()

    state = records_and_budget(database)
    rows = {row["request_id"]: row for row in state["records"] if row["request_id"].startswith("killed-")}
    assert {row["status"] for row in rows.values()} == {"pending"}  # nobody closed them: the worker is gone
    assert reap_everything(database) == 2
    state = records_and_budget(database)
    rows = {row["request_id"]: row for row in state["records"] if row["request_id"].startswith("killed-")}
    plain_row, stream_row = rows["killed-plain"], rows["killed-stream"]
    assert (plain_row["status"], plain_row["error_code"], Decimal(plain_row["cost"])) == ("abandoned", "abandoned", 0)
    assert (stream_row["status"], stream_row["error_code"]) == ("abandoned", "abandoned")
    # Charged for what the provider streamed before the worker died, at the model's prices (1 in, 2 out per 1k).
    assert stream_row["units_out"] > 0
    expected = (Decimal(str(stream_row["units_in"])) * 1 + Decimal(str(stream_row["units_out"])) * 2) / 1000
    assert Decimal(stream_row["cost"]) == expected > 0
    assert Decimal(state["reserved"]) == 0
    assert Decimal(state["spent"]) == sum(Decimal(row["cost"]) for row in state["records"])
