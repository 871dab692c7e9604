"""Streams have deadlines (MODELGATE_STREAM_TIMEOUT): past it the upstream is closed and what was
streamed is charged and recorded. A stream writes its progress on its pending record, so that when its
worker dies the reaper charges what the provider had streamed rather than nothing, and leaves a stream
that is still going alone until its deadline has passed."""
from __future__ import annotations

import json
import math
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Budget
from routing import streaming
from routing.models import InferenceRecord
from routing.tasks import reap_abandoned
from tests.faults.conftest import wait_until, words_reply
from tests.routing.conftest import post, records
from tests.routing.test_chat_completions import FRANCE
from tests.routing.test_premium_routing import premium

LONG = words_reply(60)  # at one event each 0.2 s, a 12 s answer


def chunks_of(content: bytes) -> list[dict]:
    events = [event.removeprefix("data: ") for event in content.decode().split("\n\n") if event]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def streamed_text(chunks: list[dict]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_stream_past_its_deadline_is_closed_charged_for_what_it_streamed_and_recorded(
        api, alice, budget, trickling, settings, kind):
    settings.MODELGATE_STREAM_TIMEOUT = 1
    spec = premium("chat-fake", "generation", trickling, kind=kind, input="1", output="2")
    spec.refresh_from_db()
    trickling.reply(LONG)

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "chat-fake", "max_tokens": 100, "stream": True,
                                                  "stream_options": {"include_usage": True}}, alice,
                    HTTP_X_REQUEST_ID=f"deadline-{kind}")

    assert response.status_code == 200
    chunks = chunks_of(b"".join(response.streaming_content))
    text = streamed_text(chunks)
    assert 0 < len(text.split()) < 60  # cut short, not the whole answer
    finish = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]][-1]
    assert finish == "length"  # what a client reads as "the answer was cut"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == math.ceil(len(text) / 4)  # estimated: the provider never sent its usage
    # The upstream was closed, not left writing to nobody.
    assert wait_until(lambda: trickling.streams_open == 0)
    [record] = records(f"deadline-{kind}")
    assert record.status == "ok" and "stopped at the stream deadline (1 s)" in record.routing_reason
    assert (record.unit, record.units_in, record.units_out) == ("tokens", usage["prompt_tokens"], usage["completion_tokens"])
    expected = (spec.price_input_per_1k_tokens * usage["prompt_tokens"] + spec.price_output_per_1k_tokens * usage["completion_tokens"]) / 1000
    assert record.cost == expected > 0
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == record.cost


def test_a_stream_within_its_deadline_is_charged_the_providers_usage(api, alice, budget, trickling, settings):
    settings.MODELGATE_STREAM_TIMEOUT = 60
    premium("chat-fake", "generation", trickling)
    trickling.reply(words_reply(5))

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "chat-fake", "max_tokens": 100, "stream": True,
                                                  "stream_options": {"include_usage": True}}, alice, HTTP_X_REQUEST_ID="deadline-within")

    chunks = chunks_of(b"".join(response.streaming_content))
    assert chunks[-1]["usage"]["completion_tokens"] == 5  # the fake's count (words), not an estimate
    [record] = records("deadline-within")
    assert record.status == "ok" and "deadline" not in record.routing_reason and record.units_out == 5


def test_a_stream_whose_worker_died_is_charged_by_the_reaper_for_the_tokens_it_had_streamed(
        api, alice, budget, trickling, settings, monkeypatch):
    settings.MODELGATE_REQUEST_TIMEOUT, settings.MODELGATE_STREAM_TIMEOUT = 1, 5
    monkeypatch.setattr(streaming, "PROGRESS_SECONDS", 0.3)
    spec = premium("chat-fake", "generation", trickling, input="1", output="2")
    spec.refresh_from_db()
    trickling.reply(LONG)
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "chat-fake", "max_tokens": 100, "stream": True},
                    alice, HTTP_X_REQUEST_ID="deadline-reaped")
    events = iter(response.streaming_content)
    received = [next(events) for _ in range(8)]  # the worker serves part of the answer…
    [record] = records("deadline-reaped")
    assert record.status == "pending" and record.compute_ms is not None and record.units_out > 0  # …writing its progress

    # …and dies there: time passes beyond the stream deadline, and the reaper finds the pending record.
    InferenceRecord.objects.filter(pk=record.pk).update(created_at=timezone.now() - timedelta(seconds=66))
    assert reap_abandoned() == 1

    record.refresh_from_db()
    assert (record.status, record.error_code) == ("abandoned", "abandoned")
    assert "charged for the" in record.error_message
    expected = (spec.price_input_per_1k_tokens * Decimal(str(record.units_in))
                + spec.price_output_per_1k_tokens * Decimal(str(record.units_out))) / 1000
    assert record.cost == expected > 0 and record.cost <= record.reserved_cost
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == record.cost
    assert len(received) == 8
    # The dead request's own cleanup, had it run, moves no money a second time. Closed as the test client
    # closes a stream it wrapped (its wrapper keeps the test's database connection open).
    response._iterator.close()
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == record.cost
    assert InferenceRecord.objects.get(pk=record.pk).status == "abandoned"


def test_the_reaper_leaves_a_stream_under_way_alone_until_its_deadline(db, alice, budget, settings):
    settings.MODELGATE_REQUEST_TIMEOUT, settings.MODELGATE_STREAM_TIMEOUT = 1, 300
    stream = pending_record(alice, "reaper-stream", compute_ms=30_000.0, age=120)
    plain = pending_record(alice, "reaper-plain", compute_ms=None, age=120)

    assert reap_abandoned() == 1
    assert InferenceRecord.objects.get(pk=stream.pk).status == "pending"
    assert InferenceRecord.objects.get(pk=plain.pk).status == "abandoned"
    InferenceRecord.objects.filter(pk=stream.pk).update(created_at=timezone.now() - timedelta(seconds=361))
    assert reap_abandoned() == 1
    assert InferenceRecord.objects.get(pk=stream.pk).status == "abandoned"


def pending_record(caller, request_id: str, *, compute_ms: float | None, age: float) -> InferenceRecord:
    """A pending record as admission writes it, `age` seconds old; no hold (no model: nothing to charge)."""
    return InferenceRecord.objects.create(
        request_id=request_id, tenant=caller.tenant, api_key=caller.key, task="generation", unit="tokens",
        compute_ms=compute_ms, created_at=timezone.now() - timedelta(seconds=age))


def test_a_client_that_leaves_mid_stream_is_charged_for_the_text_the_provider_wrote(api, alice, budget, trickling):
    spec = premium("chat-fake", "generation", trickling, input="1", output="2")
    spec.refresh_from_db()
    trickling.reply(LONG)
    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "chat-fake", "max_tokens": 100, "stream": True},
                    alice, HTTP_X_REQUEST_ID="deadline-left")
    events = iter(response.streaming_content)
    chunks = [json.loads(next(events).decode().removeprefix("data: ")) for _ in range(6)]

    response._iterator.close()  # the client went away: the server closes the generator (test client's wrapper)

    text = streamed_text(chunks)
    [record] = records("deadline-left")
    assert (record.status, record.error_code) == ("error", "client_disconnected")
    assert record.units_in > 0 and record.units_out == math.ceil(len(text) / 4) > 0  # estimated, as at a deadline
    assert record.cost == (spec.price_input_per_1k_tokens * Decimal(record.units_in)
                           + spec.price_output_per_1k_tokens * Decimal(record.units_out)) / 1000 > 0
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == record.cost
    assert wait_until(lambda: trickling.streams_open == 0)


def test_a_provider_that_goes_silent_mid_stream_is_bounded_by_the_deadline_not_its_own_timeout(
        api, alice, budget, fake_providers, settings):
    settings.MODELGATE_STREAM_TIMEOUT = 1
    premium("chat-fake", "generation", fake_providers, options={"timeout": 3600, "max_retries": 0})
    fake_providers.reply(words_reply(20))
    fake_providers.stall()  # half the events, then nothing

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "chat-fake", "max_tokens": 100, "stream": True},
                    alice, HTTP_X_REQUEST_ID="deadline-silent")
    content = b"".join(response.streaming_content)

    # A read timeout: the stream's 1 s bound fired. Had the provider's hour been the bound, the fake would
    # have given up first (HANG_LIMIT) and closed the connection: provider_unavailable.
    error = json.loads(content.decode().split("\n\n")[-3].removeprefix("data: "))["error"]
    assert (error["code"], error["request_id"]) == ("provider_timeout", "deadline-silent")
    [record] = records("deadline-silent")
    assert (record.status, record.error_code) == ("error", "provider_timeout")
    assert_charged_for_what_was_streamed(record, content, budget)


def assert_charged_for_what_was_streamed(record: InferenceRecord, content: bytes, budget: Budget) -> None:
    text = streamed_text(chunks_of(content)[:-1])  # the last event is the error
    assert text and record.units_out == math.ceil(len(text) / 4) and record.cost > 0
    budget.refresh_from_db()
    assert budget.reserved == 0 and budget.spent == record.cost


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_provider_error_after_text_was_streamed_ends_the_stream_and_charges_that_text(
        api, alice, budget, fake_providers, kind):
    premium("chat-fake", "generation", fake_providers, kind=kind, options={"max_retries": 0})
    fake_providers.reply(words_reply(20))
    fake_providers.stream_error()  # half the events, then an error event (overloaded)

    response = post(api, "/v1/chat/completions", {"messages": FRANCE, "model": "chat-fake", "max_tokens": 100, "stream": True},
                    alice, HTTP_X_REQUEST_ID=f"midstream-error-{kind}")
    content = b"".join(response.streaming_content)

    error = chunks_of(content)[-1]["error"]
    assert (error["code"], error["request_id"]) == ("provider_unavailable", f"midstream-error-{kind}")
    assert "chat-fake failed mid-stream" in error["message"] and "verloaded" not in error["message"]
    [record] = records(f"midstream-error-{kind}")
    assert (record.status, record.error_code) == ("error", "provider_unavailable")
    assert "verloaded" in record.error_message  # the provider's own words are kept for operators
    assert_charged_for_what_was_streamed(record, content, budget)
