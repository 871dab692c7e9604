"""The playground at /playground, clicked through in Chromium: every task against real local models (and the
loopback premium fake), the answer shown with its model, tier, latency, cost and trace; the key kept in the
browser and sent only to our own API. Then the operator's side: the admin login, the dashboard, a
record's trace."""
from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import Locator, Page, expect

from billing.usage import rollup
from routing.models import InferenceRecord
from tenants.models import Scope
from tests.conftest import Caller, make_caller
from tests.routing.conftest import FIXTURES, post
from tests.routing.test_premium_routing import premium

pytestmark = pytest.mark.django_db(transaction=True)

SHOWN = re.compile(r"\d")  # a latency or cost that was filled in, not the "—" of a missing one


def open_playground(page: Page, caller: Caller, *, remember: bool = False) -> None:
    page.goto("/playground")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.fill("#api-key", caller.secret)
    if remember:
        page.check("#remember-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-status")).to_have_class(re.compile(r"\bok\b"))
    expect(page.locator("body")).to_have_attribute("data-models", "loaded")


def submit(page: Page, task: str) -> Locator:
    page.click(f'form[data-task="{task}"] button[type=submit]')
    box = page.locator(f'[data-result="{task}"]')
    expect(box).to_have_attribute("data-state", re.compile("done|error"), timeout=60_000)
    return box


def meta(box: Locator, field: str) -> str:
    return box.locator(f'[data-field="{field}"] dd').inner_text()


def assert_answered(box: Locator, *, model: str, tier: str) -> InferenceRecord:
    """The facts every answer shows are the answer's record's, and the trace was read back from it."""
    assert box.get_attribute("data-state") == "done", box.inner_text()
    record = InferenceRecord.objects.get(id=meta(box, "inference_id"))
    assert (record.model_slug, record.tier, record.status) == (model, tier, InferenceRecord.Status.OK)
    assert meta(box, "model") == model and meta(box, "tier") == tier
    assert Decimal(meta(box, "cost")) == record.cost
    assert SHOWN.search(meta(box, "latency_ms")) and meta(box, "request_id") == record.request_id
    answer = box.locator('[data-role="attempts"] li').last
    assert answer.get_attribute("data-model") == model and answer.get_attribute("data-status") == "ok"
    return record


@pytest.fixture
def no_console_errors(page: Page):
    yield
    assert page.console_errors == []


def test_detect_language_shows_each_language_with_model_tier_latency_cost_and_trace(page, alice, starter, no_console_errors):
    open_playground(page, alice)
    page.fill("#detect-texts", "Bonjour à tous, comment allez-vous aujourd'hui ?\nGuten Morgen, wie geht es dir heute?")
    box = submit(page, "detect")
    assert box.locator('[data-role="language"]').all_inner_texts() == ["fr", "de"]
    assert_answered(box, model="lid-176", tier="local")
    assert "language_id · ok" in box.locator('[data-role="attempts"]').inner_text()

    box.locator('[data-role="feedback"] button[data-score="-1"]').click()
    expect(box.locator('[data-role="feedback-status"]')).to_have_text("Recorded as bad.")
    answered = InferenceRecord.objects.get(id=box.locator('[data-field="inference_id"] dd').inner_text())
    assert answered.feedback_score == -1 and answered.tenant == alice.tenant


def test_classify_with_the_users_own_labels(page, alice, starter, no_console_errors):
    open_playground(page, alice)
    page.click('[data-tab="classify"]')
    page.fill("#classify-texts", "Shares fell after the earnings report\nWhisk the eggs and bake")
    page.fill("#classify-labels", "sports, finance, cooking")
    box = submit(page, "classify")
    assert box.locator('[data-role="predicted"]').all_inner_texts() == ["finance", "cooking"]
    assert_answered(box, model="zero-shot-minilm", tier="local")


def test_classify_with_one_label_is_refused_in_the_page(page, alice, starter):
    open_playground(page, alice)
    page.click('[data-tab="classify"]')
    page.fill("#classify-labels", "sports")
    box = submit(page, "classify")
    expect(box.locator('[data-role="error"]')).to_have_text("Give at least two labels, separated by commas.")


def test_embed_shows_dimensions_and_similarities(page, alice, starter, no_console_errors):
    open_playground(page, alice)
    page.click('[data-tab="embed"]')
    page.fill("#embed-texts", "a cat sleeping on the sofa\na kitten napping on a couch\nquarterly tax return")
    box = submit(page, "embed")
    assert box.locator('[data-role="dimension"]').all_inner_texts() == ["384 dimensions"] * 3
    kitten, taxes = (float(text.rsplit(" ", 1)[1]) for text in box.locator('[data-role="similarity"]').all_inner_texts())
    assert kitten > 0.5 > taxes
    assert_answered(box, model="minilm-l6", tier="local")


def test_a_collection_is_created_filled_and_searched(page, alice, starter, no_console_errors):
    open_playground(page, alice)
    page.click('[data-tab="collections"]')
    page.fill('form[data-task="collection-create"] input[name="name"]', "kb")
    page.select_option('form[data-task="collection-create"] select[name="model"]', "minilm-l6")
    created = submit(page, "collection-create")
    assert "Created kb: 0 documents, 384 dimensions, cosine, model minilm-l6" in created.inner_text()

    upserted = submit(page, "collection-upsert")
    expect(upserted.locator('[data-role="upserted"]')).to_have_text("3 inserted, 0 updated, 0 unchanged; 3 embedded")
    assert_answered(upserted, model="minilm-l6", tier="local")

    page.fill("#collection-query", "how long until I get my money back?")
    found = submit(page, "collection-search")
    assert found.locator('[data-role="hit"]').first.get_attribute("data-id") == "faq-1"
    assert found.locator('[data-role="hit"]').count() == 3
    assert_answered(found, model="minilm-l6", tier="local")

    page.click('[data-action="list-collections"]')
    expect(created.locator('[data-role="collection"]')).to_have_text([re.compile(r"^kb: 3 documents")])


def test_translate_detects_the_source_and_shows_the_premium_answer(page, alice, starter, fake_providers, no_console_errors):
    premium("gpt-translate", "translation", fake_providers)
    fake_providers.reply('{"translation": "Bonjour, comment allez-vous ?"}')
    open_playground(page, alice)
    page.click('[data-tab="translate"]')
    page.fill("#translate-text", "Hello, how are you today?")
    box = submit(page, "translate")
    expect(box.locator('[data-role="translation"]')).to_have_text("Bonjour, comment allez-vous ?")
    assert "en (detected) → fr" in box.inner_text()
    assert_answered(box, model="gpt-translate", tier="premium")


def test_chat_streams_the_local_models_answer_then_answers_without_streaming(page, alice, chat_model, no_console_errors):
    open_playground(page, alice)
    page.click('[data-tab="chat"]')
    page.fill('form[data-task="chat"] input[name="max_tokens"]', "16")
    page.fill("#chat-message", "What is the capital of France?")
    box = submit(page, "chat")
    expect(page.locator('[data-role="assistant"] .says')).to_have_text(["Paris is the capital of France."])
    assert "Streamed with server-sent events." in box.inner_text()
    assert_answered(box, model="tiny-chat", tier="local")  # latency and cost read from the finished record

    page.click('[data-action="new-chat"]')
    page.uncheck('form[data-task="chat"] input[name="stream"]')
    page.fill("#chat-message", "What is the capital of France?")
    box = submit(page, "chat")
    expect(page.locator('[data-role="assistant"] .says')).to_have_text(["Paris is the capital of France."])
    assert_answered(box, model="tiny-chat", tier="local")


def test_a_stream_is_stopped_and_keeps_what_came(page, alice, starter, fake_providers, no_console_errors):
    premium("gpt-chat", "generation", fake_providers, options={"timeout": 60})
    fake_providers.reply("The first half arrives and then the provider goes silent for a long while")
    fake_providers.stall()  # half the events, then nothing
    open_playground(page, alice)
    page.click('[data-tab="chat"]')
    page.select_option('form[data-task="chat"] select[name="model"]', "gpt-chat")
    page.click('form[data-task="chat"] button[type=submit]')
    reply = page.locator('[data-role="assistant"]')
    expect(reply.locator(".says")).to_contain_text("The first half")
    page.click('[data-action="stop-chat"]')
    expect(reply).to_have_attribute("data-state", "stopped")
    box = page.locator('[data-result="chat"]')
    expect(box.locator('[data-role="how"]')).to_contain_text("Stopped")
    assert "provider goes silent" not in reply.inner_text()
    expect(page.locator('[data-action="stop-chat"]')).to_be_hidden()
    expect(page.locator('form[data-task="chat"] button[type=submit]')).to_be_enabled()
    assert meta(box, "model") == "gpt-chat" and meta(box, "tier") == "premium"


def test_an_uploaded_clip_is_transcribed(page, alice, starter, no_console_errors):
    open_playground(page, alice)
    page.click('[data-tab="audio"]')
    page.set_input_files('form[data-task="audio"] input[name="file"]', str(FIXTURES / "search_en.flac"))
    expect(page.locator('[data-role="clip"]')).to_contain_text("Uploaded: search_en.flac")
    page.select_option('form[data-task="audio"] select[name="model"]', "whisper-tiny-en")
    box = submit(page, "audio")
    assert "running shoes" in box.locator('[data-role="transcript"]').inner_text().lower()
    assert_answered(box, model="whisper-tiny-en", tier="local")


def test_a_recording_from_the_microphone_gets_its_intent(page, alice, starter, no_console_errors):
    open_playground(page, alice)
    page.click('[data-tab="audio"]')
    page.check('form[data-task="audio"] input[value="intent"]')
    expect(page.locator('form[data-task="audio"] select[name="model"] option[value="intent-tiny-en"]')).to_have_count(1)
    page.click('[data-action="record"]')
    expect(page.locator('[data-action="stop-recording"]')).to_be_visible()
    page.wait_for_timeout(2600)  # the fake microphone plays the 2.2 s sentence once
    page.click('[data-action="stop-recording"]')
    expect(page.locator('[data-role="clip"]')).to_contain_text("Recorded: recording.webm")
    box = submit(page, "audio")
    expect(box.locator('[data-role="intent"]')).to_have_text("search")
    assert "shoes" in box.locator('[data-role="transcript"]').inner_text().lower()
    assert_answered(box, model="intent-tiny-en", tier="local")


def test_a_wrong_key_and_a_missing_key_are_explained(page, alice, starter):
    page.goto("/playground")
    page.click('form[data-task="detect"] button[type=submit]')
    expect(page.locator('[data-result="detect"] [data-role="error"]')).to_have_text("Paste an API key first (mg_…).")
    page.fill("#api-key", alice.secret[:-4] + "AAAA")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-status")).to_have_class(re.compile(r"\bbad\b"))
    expect(page.locator("#key-status")).to_contain_text("401 invalid_api_key")


def test_a_key_without_the_scope_sees_the_apis_error_and_a_trace_needs_the_inferences_scope(page, tenant_a, starter):
    chat_only = make_caller(tenant_a, "chat-only", scopes=[Scope.CHAT])
    open_playground(page, chat_only)
    box = submit(page, "detect")
    expect(box.locator('[data-role="error"]')).to_contain_text("403 missing_scope")

    no_trace = make_caller(tenant_a, "detect-only", scopes=[Scope.DETECT_LANGUAGE])
    open_playground(page, no_trace)
    box = submit(page, "detect")
    assert box.locator('[data-role="language"]').all_inner_texts() == ["fr", "en"]
    expect(box.locator('[data-role="attempts"]')).to_contain_text("the trace needs the inferences scope")


def test_the_key_stays_in_the_browser_and_goes_only_to_our_api(page, alice, starter, live_server, no_console_errors):
    sent = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("authorization"))))
    open_playground(page, alice)
    submit(page, "detect")
    for url, authorization in sent:
        assert alice.secret not in url
        if authorization is not None:
            assert authorization == f"Bearer {alice.secret}" and url.startswith(f"{live_server.url}/v1/"), url
    assert {url for url, authorization in sent if authorization} >= {f"{live_server.url}/v1/me", f"{live_server.url}/v1/detect-language"}
    assert page.context.cookies() == []
    assert page.evaluate("() => [localStorage.length, sessionStorage.length]") == [0, 0]

    page.reload()  # not remembered: gone with the page
    assert page.input_value("#api-key") == ""

    open_playground(page, alice, remember=True)
    page.reload()
    assert page.input_value("#api-key") == alice.secret  # sessionStorage, this tab only
    expect(page.locator("#key-status")).to_have_class(re.compile(r"\bok\b"))
    page.click("#forget-key")
    assert page.evaluate("() => sessionStorage.length") == 0 and page.input_value("#api-key") == ""


def test_the_page_runs_no_inline_script_under_a_strict_policy(page, live_server):
    response = page.goto("/playground")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.locator("script:not([src])").count() == 0
    assert page.locator("[onclick], [onsubmit], [onchange]").count() == 0
    expect(page.locator("body")).to_have_attribute("data-ready", "true")  # the page's own script ran under it


def test_the_page_is_served_without_login_and_only_read(client):
    """Served by Django alone (no browser): these run even with MODELGATE_BROWSER_TESTS=skip."""
    response = client.get("/playground")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in response["Content-Security-Policy"] and response["Referrer-Policy"] == "no-referrer"
    assert b'src="/static/playground/playground.js"' in response.content
    assert client.get("/static/playground/playground.js").status_code == 200
    assert client.post("/playground", {"key": "mg_x"}).status_code == 405


# --- the operator's side: the admin, its dashboard and a record's trace --------------------------------
OPERATOR_PASSWORD = "correct-horse-battery-staple-7"


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_superuser("operator", "operator@example.com", OPERATOR_PASSWORD)


def log_into_the_admin(page: Page, operator) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", operator.username)
    page.fill("#id_password", OPERATOR_PASSWORD)
    page.click("#login-form [type=submit]")
    expect(page.locator("#dashboard-link")).to_be_visible()


def test_an_operator_logs_in_and_the_dashboard_shows_the_tenants_traffic(page, api, alice, starter, operator):
    for text in ("Bonjour à tous, comment allez-vous ?", "Good morning, everyone."):
        assert post(api, "/v1/detect-language", {"text": text}, alice).status_code == 200
    answers = InferenceRecord.objects.filter(tenant=alice.tenant, purpose=InferenceRecord.Purpose.ANSWER).count()
    today = timezone.now().date()
    rollup(today, today)  # the totals read the daily rollups, which the scheduler recomputes every five minutes

    log_into_the_admin(page, operator)
    page.click("#dashboard-link")
    expect(page.locator("body.dashboard")).to_be_visible()
    page.goto(f"/admin/routing/inferencerecord/dashboard/?tenant={alice.tenant.slug}&start={today}&end={today}")
    expect(page.locator("canvas#chart-requests")).to_have_attribute("data-rendered", "true")
    expect(page.locator('#dashboard-totals [data-figure="requests"] strong')).to_have_text(str(answers))
    expect(page.locator("table#latency-table")).to_contain_text("lid-176")


def test_a_records_trace_page_shows_every_attempt_of_its_request(page, api, alice, starter, fake_providers, operator):
    premium("gpt-translate", "translation", fake_providers)
    fake_providers.reply('{"translation": "Bonjour, comment allez-vous ?"}')
    response = post(api, "/v1/translate", {"text": "Hello, how are you today?", "target": "fr"}, alice)
    assert response.status_code == 200, response.content
    translation = response.json()["inference_id"]

    log_into_the_admin(page, operator)
    page.goto(f"/admin/routing/inferencerecord/{translation}/change/")
    attempts = page.locator("#request-trace table#trace-attempts tr.trace-attempt")
    expect(attempts).to_have_count(2)  # the source language detected, then the translation
    expect(attempts.nth(0)).to_contain_text("lid-176")
    current = page.locator("tr.trace-attempt.current")
    expect(current).to_have_attribute("data-record", translation)
    expect(current).to_contain_text("gpt-translate")
    expect(current).to_contain_text("premium")
