"""Corrupt weights: the local model whose weights do not load is marked unhealthy, the request falls to
the next candidate, the tenant is alerted once, and the router skips the model on later requests until a
health check passes again. The weights are a real converted model whose weight file was overwritten."""
from __future__ import annotations

import shutil

import pytest

from billing.alerts import payload
from billing.models import Alert
from core.recent import configuration
from registry.models import ModelSpec
from registry.services import health_check
from routing.models import RoutingPolicy
from tests.routing.conftest import post, records
from tests.routing.test_chat_completions import FRANCE

CHAT = {"messages": FRANCE, "max_tokens": 8, "temperature": 0}


@pytest.fixture
def corrupt_chat(chat_model, chat_dir) -> ModelSpec:
    broken = chat_dir.parent / "ct2-corrupt"
    if not broken.exists():
        shutil.copytree(chat_dir, broken)
        weights = broken / "model.bin"
        weights.write_bytes(b"\x00not a ctranslate2 model\xff" * (weights.stat().st_size // 25 or 1))
    return ModelSpec.objects.create(
        slug="corrupt-chat", display_name="corrupt chat", task="generation", backend="ctranslate2-generator",
        source_kind="path", source=str(broken), options=chat_model.options, price_per_compute_second="0.001",
    )


def test_a_model_whose_weights_do_not_load_is_marked_unhealthy_skipped_and_alerted(api, alice, bob, corrupt_chat, chat_model):
    for tenant in (alice.tenant, bob.tenant):
        RoutingPolicy.objects.create(tenant=tenant, task="generation", candidates=["corrupt-chat", "tiny-chat"],
                                     complexity_threshold=0.99)

    first = post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="corrupt-first")

    assert first.status_code == 200, first.content
    assert first["x-modelgate-model"] == "tiny-chat"  # fell to the next candidate
    failed, answered = records("corrupt-first")
    assert (failed.model_slug, failed.status, failed.error_code) == ("corrupt-chat", "error", "model_load_failed")
    assert answered.escalated_from_id == failed.id and answered.status == "ok"
    corrupt_chat.refresh_from_db()
    assert corrupt_chat.last_check_ok is False and "corrupt-chat" in corrupt_chat.last_error
    [alert] = Alert.objects.filter(kind=Alert.Kind.MODEL)
    assert (alert.tenant_id, alert.subject) == (alice.tenant.pk, "corrupt-chat") and "could not load" in alert.message
    delivered = payload(alert)  # what the budget's webhook receives
    assert (delivered["type"], delivered["tenant"], delivered["model"]) == ("model.unhealthy", "alpha", "corrupt-chat")

    configuration.forget()  # as the routing cache expires (MODELGATE_ROUTING_CACHE_SECONDS)
    second = post(api, "/v1/chat/completions", CHAT, alice, HTTP_X_REQUEST_ID="corrupt-second")

    assert second.status_code == 200 and second["x-modelgate-model"] == "tiny-chat"
    [only] = records("corrupt-second")  # the unhealthy model was not tried again
    assert only.model_slug == "tiny-chat" and "corrupt-chat skipped: unhealthy" in only.routing_reason
    assert Alert.objects.filter(kind=Alert.Kind.MODEL).count() == 1  # once a day, not once a request
    # Bob's routing skips it too, and Bob hears nothing of Alice's alert.
    assert post(api, "/v1/chat/completions", CHAT, bob, HTTP_X_REQUEST_ID="corrupt-bob").status_code == 200
    assert [record.model_slug for record in records("corrupt-bob")] == ["tiny-chat"]
    assert not Alert.objects.filter(tenant=bob.tenant).exists()


def test_a_health_check_that_fails_keeps_it_unhealthy_and_one_that_passes_brings_it_back(db, corrupt_chat, chat_model, chat_dir):
    result = health_check(spec=corrupt_chat)
    assert not result.ok and "could not load" in result.detail
    corrupt_chat.refresh_from_db()
    assert corrupt_chat.last_check_ok is False

    # The operator replaces the weights, and the health check finds them good.
    shutil.copyfile(chat_dir / "model.bin", chat_dir.parent / "ct2-corrupt" / "model.bin")
    ModelSpec.objects.filter(pk=corrupt_chat.pk).update(source=str(chat_dir.parent / "ct2-corrupt"))
    corrupt_chat.refresh_from_db()
    assert health_check(spec=corrupt_chat).ok
    corrupt_chat.refresh_from_db()
    assert corrupt_chat.last_check_ok is True
