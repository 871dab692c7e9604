"""Tokens per minute, per key and per tenant: counted at admission as an upper bound (input plus
max output), trued up to what the request used, refused with 429 before any model runs."""
from __future__ import annotations

import math
from datetime import datetime, timezone as dt_timezone

import pytest
import time_machine

from billing.models import RateCounter
from billing.ratelimits import TokenRateLimited, take_tokens
from billing.prices import Summary, token_estimate
from tests.billing.test_budgets import CHAT
from tests.routing.conftest import post, records
from tests.routing.test_premium_routing import premium

NOON = datetime(2026, 11, 22, 12, 0, 5, tzinfo=dt_timezone.utc)


def counted(bucket: str) -> int:
    return sum(RateCounter.objects.filter(bucket=bucket).values_list("count", flat=True))


def test_the_estimate_is_input_plus_the_most_the_model_may_write():
    chat = Summary(text="hello there", unit="tokens", units_in=2, max_output_tokens=100)
    assert token_estimate("generation", chat) == 5 + 1 + 100  # 11 characters / 2, rounded down, + 1
    assert token_estimate("embeddings", Summary(text="x" * 40, unit="characters", units_in=40)) == 21
    assert token_estimate("translation", Summary(text="x" * 40, unit="characters", units_in=40)) == 0


def test_tokens_are_taken_only_when_they_fit_and_given_back_on_true_up(alice):
    alice.key.tpm_limit = 150
    with time_machine.travel(NOON, tick=False):
        first = take_tokens(alice.key, 106)
        with pytest.raises(TokenRateLimited) as refused:
            take_tokens(alice.key, 106)
        # 106 of 150 used: another 106 fits once they weigh 44, 35.1 s into the next minute.
        assert refused.value.headers["Retry-After"] == "91"
        assert counted(f"tokens:key:{alice.key.pk}") == 106  # the refused request counted nothing
        first.true_up(10)  # it used 10 tokens in the end
        assert counted(f"tokens:key:{alice.key.pk}") == 10
        assert take_tokens(alice.key, 106) is not None


def test_the_tenant_limit_spans_keys_and_a_refusal_gives_back_the_keys_share(alice, alice_limited):
    alice.tenant.tpm_limit = 200
    alice.key.tpm_limit = 1000
    with time_machine.travel(NOON, tick=False):
        take_tokens(alice_limited.key, 150)
        with pytest.raises(TokenRateLimited):
            take_tokens(alice.key, 100)  # the key has room, the tenant has not
    assert counted(f"tokens:key:{alice.key.pk}") == 0
    assert counted(f"tokens:tenant:{alice.tenant.pk}") == 150


def test_a_request_bigger_than_the_limit_is_told_so(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    alice.key.tpm_limit = 50
    alice.key.save()
    response = post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="tpm-toobig-1")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "request_too_large_for_limit" and "50 tokens per minute" in error["message"]
    assert records("tpm-toobig-1") == [] and fake_providers.requests_to("/v1/chat/completions") == []


def test_chat_through_the_api_counts_what_was_used_and_refuses_past_the_limit(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    alice.key.tpm_limit = 150
    alice.key.save()
    with time_machine.travel(NOON, tick=False):
        ok = post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="tpm-chat-001")
        assert ok.status_code == 200
        record = records("tpm-chat-001")[0]
        bound = token_estimate("generation", Summary(text=record.input_preview, unit="tokens", units_in=0, max_output_tokens=100))
        assert ok["x-ratelimit-limit-tokens"] == "150" and ok["x-ratelimit-remaining-tokens"] == str(150 - bound)
        used = int(record.units_in + record.units_out)
        assert counted(f"tokens:key:{alice.key.pk}") == used < bound  # trued up to the provider's usage
        streamed = post(api, "/v1/chat/completions", {**CHAT, "stream": True}, alice, HTTP_X_REQUEST_ID="tpm-chat-002")
        b"".join(streamed.streaming_content)
        assert counted(f"tokens:key:{alice.key.pk}") == used + int(sum(
            r.units_in + r.units_out for r in records("tpm-chat-002")))
        RateCounter.objects.filter(bucket=f"tokens:key:{alice.key.pk}").update(count=100)
        refused = post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="tpm-chat-003")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert refused["Retry-After"] == str(math.ceil(55 + 60 * (1 - (150 - bound) / 100)))
    assert refused["x-ratelimit-remaining-tokens"] == "50"
    assert records("tpm-chat-003") == []
    assert len(fake_providers.requests_to("/v1/chat/completions")) == 2


def test_a_failed_request_gives_its_tokens_back(api, alice, starter, fake_providers):
    premium("gpt-fake", "generation", fake_providers)
    alice.key.tpm_limit = 1000
    alice.key.save()
    fake_providers.status(400)  # a client error: not retried, nothing used
    with time_machine.travel(NOON, tick=False):
        response = post(api, "/v1/chat/completions", CHAT, alice)
    assert response.status_code >= 400
    assert counted(f"tokens:key:{alice.key.pk}") == 0


def test_tasks_not_priced_by_tokens_take_no_token_query(api, alice, starter, django_assert_num_queries):
    alice.key.tpm_limit = 10
    alice.key.save()
    post(api, "/v1/detect-language", {"text": "warm up the model first"}, alice)
    with django_assert_num_queries(3):  # key+tenant, record insert, record update: no counter
        assert post(api, "/v1/detect-language", {"text": "Das ist ein deutscher Satz."}, alice).status_code == 200
