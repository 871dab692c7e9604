"""The permission matrix: every /v1/ route and method × {no key, Alice's full key, her chat-only key,
Bob acting on Alice's object}, each with the one status it must answer, read from the views."""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from billing.models import Alert, Budget
from embeddings import ingestion
from embeddings.models import Collection, Document, IngestionJob, SearchRecord
from routing.models import InferenceRecord
from tenants.models import ApiKey
from tests.conftest import Caller
from tests.embeddings.conftest import collection, cross_encoder_dir, minilm, reranker  # noqa: F401  (fixtures)
from tests.embeddings.conftest import topic_documents
from tests.routing.conftest import audio_file, post
from tests.routing.test_chat_completions import FRANCE

PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


class AlicesObjects:
    """What a row's URL or body names, owned by Alice: each made by its fixture when a row first asks."""

    def __init__(self, request: pytest.FixtureRequest, alice: Caller):
        self.request = request
        self.alice = alice

    @property
    def prefix(self) -> str:
        return self.alice.key.prefix

    @property
    def inference(self) -> str:
        return self.request.getfixturevalue("alice_inference")["inference_id"]

    @property
    def request_id(self) -> str:
        return self.request.getfixturevalue("alice_inference")["request_id"]

    @property
    def ref(self) -> str:
        return self.request.getfixturevalue("collection")["id"]

    @property
    def external_id(self) -> str:
        self.request.getfixturevalue("collection")
        return "cats-0"

    @property
    def job(self) -> str:
        return self.request.getfixturevalue("alice_job")

    @property
    def cancelled_job(self) -> str:
        return self.request.getfixturevalue("alice_cancelled_job")


@dataclass(frozen=True)
class MissingObjects:
    """The same names for objects that exist for nobody: what Bob must not tell apart from Alice's."""

    prefix: str = "0123456789ab"
    inference: str = str(uuid.uuid4())
    request_id: str = "no-such-request"
    ref: str = str(uuid.uuid4())
    external_id: str = "cats-0"
    job: str = str(uuid.uuid4())
    cancelled_job: str = str(uuid.uuid4())


MISSING = MissingObjects()
Objects = AlicesObjects | MissingObjects


@dataclass(frozen=True)
class Row:
    method: str
    route: str  # the pattern as the URL resolver spells it
    no_key: int
    alice: int  # every scope, on her own objects
    limited: int  # alice_limited: the chat scope only
    other: int | None  # Bob on Alice's object (the 404 of a missing one); None: the route names no object
    note: str  # what Alice sends: a valid request, or a deliberately empty one and why
    body: Callable[[Objects], dict[str, Any]] | None = None
    multipart: bool = False
    pk: str = ""  # which of Alice's objects `<uuid:pk>` names
    needs: tuple[str, ...] = ()  # fixtures Alice's success depends on (models, a budget)

    def __str__(self) -> str:
        return f"{self.method.upper()} /{self.route}"

    def url(self, objects: Objects) -> str:
        return "/" + PARAMETER.sub(lambda m: str(getattr(objects, self.pk if m[1] == "pk" else m[1])), self.route)

    def call(self, api, objects: Objects, caller: Caller | None):
        headers = caller.auth if caller else {}
        request = getattr(api, self.method)
        if self.body is None:
            return request(self.url(objects), **headers)
        if self.multipart:
            return request(self.url(objects), self.body(objects), format="multipart", **headers)
        return request(self.url(objects), json.dumps(self.body(objects)), content_type="application/json", **headers)


ONE_DOCUMENT = [{"id": "dogs-0", "text": "The dog fetched the ball from the lake."}]

MATRIX = [
    # method, route, then the status of each column: no key, alice, limited, other; what Alice sends
    Row("get", "v1/me", 401, 200, 200, None, "no body; any valid key may ask"),
    Row("get", "v1/keys", 401, 200, 403, None, "no body"),
    Row("get", "v1/keys/<str:prefix>", 401, 200, 403, 404, "no body; Alice's full key's prefix"),
    Row("post", "v1/translate", 401, 200, 403, None, "valid: explicit source, a tiny NLLB",
        lambda o: {"text": "Hello world", "source": "en", "target": "de"}, needs=("translator",)),
    Row("post", "v1/detect-language", 401, 200, 403, None, "valid: lid.176",
        lambda o: {"text": "The cat sleeps on a warm chair."}, needs=("starter",)),
    Row("post", "v1/classify", 401, 200, 403, None, "valid: zero-shot MiniLM with labels",
        lambda o: {"text": "Shares fell after the earnings report", "labels": ["finance", "cooking"]}, needs=("starter",)),
    Row("post", "v1/embeddings", 401, 200, 403, None, "valid: MiniLM",
        lambda o: {"input": "a cat", "model": "minilm-l6"}, needs=("starter",)),
    Row("post", "v1/rerank", 401, 200, 403, None, "valid: a cross-encoder on MiniLM",
        lambda o: {"query": "cats", "documents": ["cats purr", "tax forms"]}, needs=("reranker",)),
    Row("post", "v1/chat/completions", 401, 200, 200, None, "valid: a tiny local chat model; the limited key may chat",
        lambda o: {"messages": FRANCE, "max_tokens": 8, "temperature": 0}, needs=("chat_model",)),
    Row("post", "v1/audio/transcriptions", 401, 200, 403, None, "valid: a short clip, Whisper tiny.en",
        lambda o: {"file": audio_file("search_en.flac"), "model": "whisper-tiny-en"}, multipart=True, needs=("starter",)),
    Row("post", "v1/intent", 401, 200, 403, None, "valid: a short clip (~6 s alone, <1 s after test_audio_api)",
        lambda o: {"file": audio_file("checkout_en.flac")}, multipart=True, needs=("starter",)),
    Row("get", "v1/models", 401, 200, 200, None, "no body; any valid key may list what it may use", needs=("starter",)),
    Row("get", "v1/inferences/<uuid:pk>", 401, 200, 403, 404, "no body; Alice's detect-language record", pk="inference"),
    Row("post", "v1/feedback", 401, 200, 403, 404, "valid: Alice's answered request id (the object is in the body)",
        lambda o: {"request_id": o.request_id, "score": 1}),
    Row("get", "v1/collections", 401, 200, 403, None, "no body"),
    Row("post", "v1/collections", 401, 201, 403, None, "valid: MiniLM measures the dimension",
        lambda o: {"name": "drafts", "model": "minilm-l6"}, needs=("minilm",)),
    Row("get", "v1/collections/<str:ref>", 401, 200, 403, 404, "no body; Alice's notes by id"),
    Row("delete", "v1/collections/<str:ref>", 401, 200, 403, 404, "no body; deletes Alice's notes"),
    Row("post", "v1/collections/<str:ref>/documents", 401, 200, 403, 404, "valid: one new document",
        lambda o: {"documents": ONE_DOCUMENT}),
    Row("post", "v1/collections/<str:ref>/documents:delete", 401, 200, 403, 404, "valid: one id",
        lambda o: {"ids": ["cats-0"]}),
    Row("get", "v1/collections/<str:ref>/documents/<path:external_id>", 401, 200, 403, 404, "no body"),
    Row("delete", "v1/collections/<str:ref>/documents/<path:external_id>", 401, 200, 403, 404, "no body"),
    Row("post", "v1/collections/<str:ref>/search", 401, 200, 403, 404, "valid: a text query",
        lambda o: {"query": "cats", "k": 3}),
    Row("get", "v1/collections/<str:ref>/jobs", 401, 200, 403, 404, "no body"),
    Row("post", "v1/collections/<str:ref>/jobs", 401, 202, 403, 404, "valid: documents as JSON",
        lambda o: {"documents": ONE_DOCUMENT}),
    Row("get", "v1/jobs/<uuid:pk>", 401, 200, 403, 404, "no body; a queued job", pk="job"),
    Row("post", "v1/jobs/<uuid:pk>/resume", 401, 200, 403, 404, "no body; a cancelled job", pk="cancelled_job"),
    Row("post", "v1/jobs/<uuid:pk>/cancel", 401, 200, 403, 404, "no body; a queued job", pk="job"),
    Row("get", "v1/budget", 401, 200, 403, None, "no body", needs=("alice_budget",)),
    Row("patch", "v1/budget", 401, 200, 403, None, "valid: an alert email; needs a budget and every scope",
        lambda o: {"alert_email": "billing@alpha.example"}, needs=("alice_budget",)),
    Row("get", "v1/alerts", 401, 200, 403, None, "no body"),
    Row("get", "v1/usage", 401, 200, 403, None, "no body: the current month by day"),
]


@pytest.fixture
def alice_inference(api, alice, starter) -> dict:
    response = post(api, "/v1/detect-language", {"text": "The cat sleeps on a warm chair."}, alice)
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def alice_job(api, alice, collection) -> str:
    response = post(api, f"/v1/collections/{collection['id']}/jobs", {"documents": topic_documents()[:2]}, alice)
    assert response.status_code == 202, response.content
    return response.json()["id"]


@pytest.fixture
def alice_cancelled_job(alice_job) -> str:
    ingestion.cancel_job(job=IngestionJob.objects.get(pk=alice_job))
    return alice_job


@pytest.fixture
def alice_budget(alice) -> Budget:
    return Budget.objects.create(tenant=alice.tenant, limit=Decimal("10"))


def everything() -> dict[str, list]:
    """Every row a request could change, but for what authenticating itself writes (a key's last use)."""
    fields = {
        ApiKey: ["prefix", "name", "scopes", "revoked_at", "expires_at"],
        Collection: ["pk", "name", "document_count", "updated_at"],
        Document: ["collection", "external_id", "content_hash", "updated_at"],
        IngestionJob: ["pk", "status", "done", "updated_at"],
        InferenceRecord: ["pk", "status", "feedback_score", "feedback_at"],
        SearchRecord: ["pk"],
        Budget: ["tenant", "alert_email", "webhook_url", "webhook_secret", "updated_at"],
        Alert: ["pk"],
    }
    return {model.__name__: list(model.objects.order_by("pk").values_list(*names)) for model, names in fields.items()}


def error(response) -> tuple[int, str, str]:
    """Status, code and message with the object's name or id blanked: all Bob may learn from a 404."""
    body = response.json()["error"]
    message = re.sub(r"'[^']*'|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "?", body["message"])
    return response.status_code, body["code"], message


@pytest.mark.parametrize("row", MATRIX, ids=str)
def test_each_principal_gets_exactly_the_status_of_its_column(request, api, alice, alice_limited, bob, row):
    for name in row.needs:
        request.getfixturevalue(name)
    alices = AlicesObjects(request, alice)
    # Alice's objects are made now, before the snapshot, so that only the calls below are compared with it.
    row.url(alices)
    if row.body is not None:
        row.body(alices)
    before = everything()

    anonymous = row.call(api, alices, None)
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (row.no_key, "not_authenticated")

    if row.other is not None:
        foreign, missing = row.call(api, alices, bob), row.call(api, MISSING, bob)
        assert error(foreign) == error(missing)
        assert foreign.status_code == row.other, foreign.content
    assert everything() == before

    limited = row.call(api, alices, alice_limited)
    assert limited.status_code == row.limited, limited.content
    if row.limited == 403:
        assert limited.json()["error"]["code"] == "missing_scope"
        assert everything() == before

    # Last, as it may delete what the others were refused: and its success shows the object was real.
    own = row.call(api, alices, alice)
    assert own.status_code == row.alice, own.content


def v1_routes() -> set[tuple[str, str]]:
    """(method, route) for every view method under /v1/, walked from the URL resolver itself. OPTIONS
    (DRF's metadata) and HEAD (Django's GET) come with every view and are left out."""
    found: set[tuple[str, str]] = set()

    def walk(patterns: list, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("v1/"):
                view = getattr(pattern.callback, "view_class", None)
                if view is None:  # a function view: which methods it answers is not written down anywhere
                    found.add(("?", route))
                    continue
                found.update((method, route) for method in view.http_method_names
                             if method not in ("options", "head") and hasattr(view, method))

    walk(get_resolver().url_patterns, "")
    return found


def test_every_v1_route_and_method_has_exactly_one_row():
    rows = [(row.method, row.route) for row in MATRIX]
    assert len(rows) == len(set(rows)), "a route and method with two rows"
    assert v1_routes() - set(rows) == set(), "routes without a row in MATRIX"
    assert set(rows) - v1_routes() == set(), "rows for routes that no longer exist"


def test_every_route_that_names_an_object_has_an_other_tenant_column():
    for row in MATRIX:
        names_an_object = PARAMETER.search(row.route) is not None or row.route == "v1/feedback"
        assert (row.other == 404) == names_an_object, str(row)

