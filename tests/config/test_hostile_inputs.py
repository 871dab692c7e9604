"""Hostile but fair input on every /v1 route: each class of it (deep nesting, lone surrogates, NUL in values,
keys, path segments and query strings, oversized URLs and strings, wrong types, huge numbers) is a 4xx in the
one error shape, and nothing is written: no record, document, collection, job or key, and no money held.

The routes, their methods and Alice's valid requests are the permission matrix's (tests/routing/
test_permissions.py, where each of those requests is shown to succeed); this table says, per route, which
fields of that request hold text, numbers and objects for the hostile values to go in."""
from __future__ import annotations

import copy
import signal
import socket
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, transaction

from billing.models import Budget
from routing.models import QualitySignal
from tests.conftest import Caller
from tests.embeddings.conftest import collection, cross_encoder_dir, minilm, reranker  # noqa: F401  (fixtures)
from tests.routing.conftest import chat_dir, chat_model, nllb_dir, translator  # noqa: F401  (fixtures)
from tests.routing.test_permissions import (  # noqa: F401  (fixtures)
    MATRIX,
    PARAMETER,
    AlicesObjects,
    Row,
    alice_budget,
    alice_cancelled_job,
    alice_inference,
    alice_job,
    everything,
    v1_routes,
)

MAX_URL = 8000
HUGE_TEXT = "x" * 300_000  # over every per-field limit, far under the body limit
DEEP = "[" * 5000 + "]" * 5000


@dataclass(frozen=True)
class Fields:
    """Where a route's valid request holds text, numbers and objects (dotted paths, as errors name them)."""

    text: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    # Fields of records that an ingestion job checks one by one, listing the bad ones (tests/embeddings/
    # test_jobs.py): what the parser refuses is refused here, a wrong type or length is the job's to list.
    records: tuple[str, ...] = ()

    @property
    def reads_a_body(self) -> bool:
        return bool(self.text or self.numbers or self.objects or self.records)


# Every (method, route) of /v1, with the fields of Alice's request in MATRIX. Routes that read no body
# (GET, DELETE, a job's resume and cancel) meet the URL classes only.
TABLE: dict[tuple[str, str], Fields] = {
    ("get", "v1/me"): Fields(),
    ("get", "v1/keys"): Fields(),
    ("get", "v1/keys/<str:prefix>"): Fields(),
    ("post", "v1/translate"): Fields(text=("text", "target", "source")),
    ("post", "v1/detect-language"): Fields(text=("text", "model"), numbers=("top_k",)),
    ("post", "v1/classify"): Fields(text=("text", "labels.0")),
    ("post", "v1/embeddings"): Fields(text=("input", "model")),
    ("post", "v1/rerank"): Fields(text=("query", "documents.1"), numbers=("top_n",)),
    ("post", "v1/chat/completions"): Fields(text=("messages.0.content", "messages.0.role"),
                                            numbers=("max_tokens", "temperature"), objects=("stream_options",)),
    ("post", "v1/audio/transcriptions"): Fields(text=("model", "language")),
    ("post", "v1/intent"): Fields(text=("model",)),
    ("get", "v1/models"): Fields(),
    ("get", "v1/inferences/<uuid:pk>"): Fields(),
    ("post", "v1/feedback"): Fields(text=("request_id", "comment"), numbers=("score",)),
    ("get", "v1/collections"): Fields(),
    ("post", "v1/collections"): Fields(text=("name", "model"), numbers=("dimension",), objects=("metadata_schema",)),
    ("get", "v1/collections/<str:ref>"): Fields(),
    ("delete", "v1/collections/<str:ref>"): Fields(),
    ("post", "v1/collections/<str:ref>/documents"): Fields(text=("documents.0.id", "documents.0.text"),
                                                           objects=("documents.0.metadata",)),
    ("post", "v1/collections/<str:ref>/documents:delete"): Fields(text=("ids.0",)),
    ("get", "v1/collections/<str:ref>/documents/<path:external_id>"): Fields(),
    ("delete", "v1/collections/<str:ref>/documents/<path:external_id>"): Fields(),
    ("post", "v1/collections/<str:ref>/search"): Fields(text=("query",), numbers=("k", "ef_search"), objects=("filter",)),
    ("get", "v1/collections/<str:ref>/jobs"): Fields(),
    ("post", "v1/collections/<str:ref>/jobs"): Fields(records=("documents.0.id", "documents.0.text", "documents.0.metadata")),
    ("get", "v1/jobs/<uuid:pk>"): Fields(),
    ("post", "v1/jobs/<uuid:pk>/resume"): Fields(),
    ("post", "v1/jobs/<uuid:pk>/cancel"): Fields(),
    ("get", "v1/budget"): Fields(),
    ("patch", "v1/budget"): Fields(text=("alert_email", "webhook_url")),
    ("get", "v1/alerts"): Fields(),
    ("get", "v1/usage"): Fields(),
}


def put(body: Any, path: str, value: Any) -> Any:
    """A copy of `body` with `value` at the dotted `path` (a missing last key is added)."""
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return body


@dataclass
class Case:
    """One hostile request and what its refusal must look like."""

    name: str
    send: Callable[[Any, Caller], Any]
    status: tuple[int, ...] = (400,)
    code: str | None = None
    names: str | None = None  # the message starts with this field path

    def problem(self, response) -> str | None:
        if not 400 <= response.status_code < 500:
            return f"answered {response.status_code}: {response.content[:300]!r}"
        if response.status_code not in self.status:
            return f"answered {response.status_code}, not {self.status}: {response.content[:300]!r}"
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"not the error shape: {response.content[:300]!r}"
        if not {"code", "message", "request_id"} <= set(error) or not set(error) <= {"code", "message", "request_id", "details"}:
            return f"not the error shape: {error}"
        if not error["request_id"]:
            return "no request id"
        if self.code is not None and error["code"] != self.code:
            return f"code {error['code']!r}, not {self.code!r}: {error['message']}"
        if self.names is not None and not error["message"].startswith(f"{self.names}:"):
            return f"the message does not name {self.names!r}: {error['message']}"
        return None


def raw(row: Row, url: str, body: str, content_type: str = "application/json") -> Callable[[Any, Caller], Any]:
    return lambda api, caller: getattr(api, row.method)(url, body, content_type=content_type, **caller.auth)


def as_json(row: Row, url: str, body: Any) -> Callable[[Any, Caller], Any]:
    # json.dumps writes NUL and lone surrogates as \u escapes: the request is valid JSON, as a client would send.
    return raw(row, url, json.dumps(body))


def multipart(row: Row, url: str, body: dict[str, Any]) -> Callable[[Any, Caller], Any]:
    return lambda api, caller: getattr(api, row.method)(url, body, format="multipart", **caller.auth)


def url_cases(row: Row, objects: AlicesObjects) -> list[Case]:
    """Every route: NUL in each path segment it names (or after its last one), NUL in the query string,
    a URL over the limit, and a path segment far longer than any name or id."""
    url = row.url(objects)
    cases = [
        Case("NUL in the query string", lambda api, caller: getattr(api, row.method)(url + "?q=a%00b", **caller.auth),
             code="invalid_request"),
        Case("NUL in a query parameter's name", lambda api, caller: getattr(api, row.method)(url + "?a%00=1", **caller.auth),
             code="invalid_request"),
        Case("URL over the limit", lambda api, caller: getattr(api, row.method)(url + "?pad=" + "a" * MAX_URL, **caller.auth),
             status=(414,), code="uri_too_long"),
        Case("1,500 query parameters", lambda api, caller: getattr(api, row.method)(url + "?" + "a=1&" * 1500, **caller.auth)),
    ]
    parameters = PARAMETER.findall(row.route)
    for name in parameters or ["(none)"]:
        nul_url = ("/" + PARAMETER.sub(lambda m: "%00" if m[1] == name else str(getattr(objects, row.pk if m[1] == "pk" else m[1])),
                                       row.route)) if parameters else url + "%00"
        long_url = ("/" + PARAMETER.sub(lambda m: "a" * 7000 if m[1] == name else str(getattr(objects, row.pk if m[1] == "pk" else m[1])),
                                        row.route)) if parameters else url + "/" + "a" * 7000
        cases.append(Case(f"NUL in the path ({name})", lambda api, caller, u=nul_url: getattr(api, row.method)(u, **caller.auth),
                          code="invalid_request"))
        cases.append(Case(f"a 7,000-character path segment ({name})",
                          lambda api, caller, u=long_url: getattr(api, row.method)(u, **caller.auth), status=(400, 404, 405)))
        odd_url = nul_url.replace("%00", "%ED%A0%80%FF")
        cases.append(Case(f"invalid UTF-8 in the path ({name})",
                          lambda api, caller, u=odd_url: getattr(api, row.method)(u, **caller.auth), status=(400, 404, 405)))
    return cases


def body_cases(row: Row, fields: Fields, objects: AlicesObjects) -> list[Case]:
    """Routes that read a body: the classes of hostile JSON (and form fields, for multipart routes)."""
    url, base = row.url(objects), row.body(objects)
    json_base = {name: value for name, value in base.items() if name != "file"}  # a multipart row's fields, as JSON
    cases = [
        Case("5,000 nested arrays", raw(row, url, DEEP), code="invalid_json"),
        Case("5,000 nested objects", raw(row, url, '{"a":' * 5000 + "1" + "}" * 5000), code="invalid_json"),
        Case("a number of 5,000 digits", raw(row, url, '{"n": ' + "9" * 5000 + "}"), code="invalid_json"),
        Case("NaN", raw(row, url, '{"n": NaN}'), code="invalid_json"),
        Case("invalid UTF-8", lambda api, caller: getattr(api, row.method)(url, b'{"a": "\xed\xa0\x80"}',
                                                                           content_type="application/json", **caller.auth),
             code="invalid_json"),
        Case("a JSON array for a body", as_json(row, url, [json_base])),
        Case("a JSON string for a body", as_json(row, url, "text")),
        Case("null for a body", as_json(row, url, None)),
        Case("NUL in a top-level key", as_json(row, url, {**json_base, "a\x00": 1}), code="invalid_request"),
        Case("a lone surrogate in a top-level key", as_json(row, url, {**json_base, "\udfff": 1}), code="invalid_request"),
    ]
    for path in fields.records:
        cases += [
            Case(f"NUL in {path}", as_json(row, url, put(json_base, path, "a\x00b")), code="invalid_request", names=path),
            Case(f"a lone surrogate in {path}", as_json(row, url, put(json_base, path, "a\ud800b")), code="invalid_request", names=path),
            Case(f"40 nested lists in {path}", as_json(row, url, put(json_base, path, nested_lists(40))), code="invalid_json"),
        ]
    for path in fields.text:
        cases += [
            Case(f"NUL in {path}", as_json(row, url, put(json_base, path, "a\x00b")), code="invalid_request", names=path),
            Case(f"a lone surrogate in {path}", as_json(row, url, put(json_base, path, "a\ud800b")), code="invalid_request", names=path),
            Case(f"a trailing lone surrogate in {path}", as_json(row, url, put(json_base, path, "ab\udbff")), code="invalid_request",
                 names=path),
            Case(f"40 nested lists in {path}", as_json(row, url, put(json_base, path, nested_lists(40))), code="invalid_json"),
        ]
        if row.multipart:
            form = lambda value, p=path: multipart(row, url, put(row.body(objects), p, value))  # noqa: E731  (a fresh file each time)
            cases += [
                Case(f"NUL in form field {path}", lambda api, caller, p=path: form("a\x00b", p)(api, caller),
                     code="invalid_request", names=path),
                Case(f"NUL in a form field's name", lambda api, caller: multipart(row, url, {**row.body(objects), "a\x00": "1"})(api, caller),
                     code="invalid_request"),
                Case(f"300,000 characters in form field {path}", lambda api, caller, p=path: form(HUGE_TEXT, p)(api, caller),
                     status=(400, 413), names=path),
            ]
        else:
            cases += [
                Case(f"an object for {path}", as_json(row, url, put(json_base, path, {"a": 1})), names=path),
                Case(f"a list for {path}", as_json(row, url, put(json_base, path, [[1]])), names=path),
                Case(f"true for {path}", as_json(row, url, put(json_base, path, True)), names=path),
                Case(f"300,000 characters in {path}", as_json(row, url, put(json_base, path, HUGE_TEXT)), status=(400, 413)),
            ]
    for path in fields.numbers:
        cases += [
            Case(f"text for {path}", as_json(row, url, put(json_base, path, "ten")), names=path),
            Case(f"10**30 for {path}", as_json(row, url, put(json_base, path, 10**30)), names=path),
            Case(f"-10**30 for {path}", as_json(row, url, put(json_base, path, -10**30)), names=path),
            Case(f"a 308-digit integer for {path}", as_json(row, url, put(json_base, path, int("9" * 308))), names=path),
            Case(f"a 309-digit integer for {path}", as_json(row, url, put(json_base, path, int("9" * 309))), code="invalid_json"),
            Case(f"1e400 for {path}", raw(row, url, json.dumps(put(json_base, path, 0)).replace(f'"{path}": 0', f'"{path}": 1e400')),
                 names=path),
        ]
    for path in fields.objects:
        cases += [
            Case(f"NUL in a key of {path}", as_json(row, url, put(json_base, path, {"a\x00": "string"})), code="invalid_request",
                 names=path),
            Case(f"a lone surrogate in a key of {path}", as_json(row, url, put(json_base, path, {"\ud800": "string"})),
                 code="invalid_request", names=path),
            Case(f"NUL in a value of {path}", as_json(row, url, put(json_base, path, {"a": "b\x00"})), code="invalid_request",
                 names=f"{path}.a"),
            Case(f"a list for {path}", as_json(row, url, put(json_base, path, ["a"])), names=path),
            Case(f"40 nested objects in {path}", as_json(row, url, put(json_base, path, nested_objects(40))), code="invalid_json"),
        ]
    return cases


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_objects(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"in": value}
    return value


def written() -> dict[str, Any]:
    """Every row a request could write (the permission matrix's list), money held and spent, quality signals."""
    state = everything()
    state["money"] = list(Budget.objects.order_by("pk").values_list("spent", "reserved"))
    state["signals"] = QualitySignal.objects.count()
    return state


class Rollback(Exception):
    pass


def attempt(case: Case, api, caller: Caller) -> str | None:
    """Send one hostile request in a savepoint of its own (so that one that slipped through to the database
    leaves the next ones a working connection) and say what is wrong with the outcome, if anything."""
    before = written()
    try:
        with transaction.atomic():
            response = case.send(api, caller)
            try:
                after = written()
            except DatabaseError as exc:
                after = {"the database": f"left in error: {exc}"}
            raise Rollback
    except Rollback:
        pass
    problem = case.problem(response)
    if problem is None and after != before:
        problem = "wrote: " + ", ".join(name for name in before if before[name] != after.get(name))
    if problem is None and any(reserved for _, reserved in after.get("money", [])):
        problem = "money is held"
    return problem


@pytest.mark.parametrize("row", MATRIX, ids=str)
def test_every_class_of_hostile_input_is_a_4xx_in_the_error_shape_and_writes_nothing(request, api, alice, row):
    for name in row.needs:
        request.getfixturevalue(name)
    budget = request.getfixturevalue("alice_budget")
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("1"))  # money to watch: a hostile request moves none
    objects = AlicesObjects(request, alice)
    row.url(objects)
    if row.body is not None:
        row.body(objects)  # Alice's objects are made now, before any snapshot
    fields = TABLE[(row.method, row.route)]
    cases = url_cases(row, objects) + (body_cases(row, fields, objects) if fields.reads_a_body else [])
    api.raise_request_exception = False  # a 500 is an answer to report here, not an exception
    failures = [f"{case.name}: {problem}" for case in cases if (problem := attempt(case, api, alice))]
    assert not failures, f"{len(failures)} of {len(cases)} hostile requests to {row}:\n" + "\n".join(failures)


def test_every_v1_route_and_method_is_in_the_table():
    assert set(TABLE) == v1_routes(), "add the new route to TABLE (and its valid request to the permission matrix)"
    assert {(row.method, row.route) for row in MATRIX} == set(TABLE)


def test_every_route_that_reads_a_body_has_its_text_fields_listed():
    for row in MATRIX:
        fields = TABLE[(row.method, row.route)]
        assert (row.body is not None) == fields.reads_a_body, str(row)
        if row.body is not None and not row.multipart:
            strings = {name for name, value in row.body(MissingBodies()).items() if isinstance(value, str)}
            listed = {path.split(".")[0] for path in fields.text + fields.records}
            assert strings <= listed, f"{row}: text fields missing from TABLE"


class MissingBodies:
    """Stand-ins for the names a body mentions, for reading the shape of a row's body without a database."""

    prefix = request_id = ref = external_id = "x" * 12
    inference = job = cancelled_job = "00000000-0000-0000-0000-000000000000"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/health", "/ready", "/api/schema/", "/v1/no-such-route", "/admin/login/"])
def test_outside_the_api_urls_meet_the_same_limits(api, path):
    api.raise_request_exception = False
    long = api.get(path + "?pad=" + "a" * MAX_URL)
    assert long.status_code == 414 and long.json()["error"]["code"] == "uri_too_long"
    nul = api.get(path + "%00")
    assert nul.status_code == 400 and nul.json()["error"]["code"] == "invalid_request"
    assert re.search("NUL", nul.json()["error"]["message"])


@pytest.mark.django_db
def test_a_url_at_the_limit_is_served(api, alice):
    url = "/v1/me?pad="
    response = api.get(url + "a" * (MAX_URL - len(url)), **alice.auth)
    assert response.status_code == 200, response.content
    assert api.get(url + "a" * (MAX_URL - len(url) + 1), **alice.auth).status_code == 414


@pytest.mark.django_db
def test_nesting_up_to_the_limit_is_accepted_and_one_level_more_is_not(api, alice, settings):
    # metadata_schema is the first field checked deep inside: its own validation answers at depth 32.
    def create(depth: int):
        schema = nested_objects(depth - 1)  # the body itself is one level
        return api.post("/v1/collections", json.dumps({"name": "deep", "model": None, "dimension": 2, "metadata_schema": schema}),
                        content_type="application/json", **alice.auth)

    at_limit, over = create(settings.MODELGATE_MAX_JSON_DEPTH), create(settings.MODELGATE_MAX_JSON_DEPTH + 1)
    assert at_limit.json()["error"]["code"] == "invalid_request"  # parsed, then refused by the schema's own rule
    assert at_limit.json()["error"]["message"].startswith("metadata_schema")
    assert (over.status_code, over.json()["error"]["code"]) == (400, "invalid_json")
    assert "nested deeper than 32 levels" in over.json()["error"]["message"]


def raw_request(port: int, data: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send bytes no HTTP client library would, and read the whole answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    line, *fields = head.split(b"\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (f.decode().partition(":") for f in fields)}
    return line, headers, body


@pytest.mark.django_db(transaction=True)
def test_served_by_gunicorn_long_urls_and_requests_gunicorn_refuses_itself_get_the_error_shape(tmp_path):
    from tests.config.test_serve import Served, free_port

    served = Served(free_port(), tmp_path)
    try:
        served.wait_for(r"Modelgate is ready")
        # Over gunicorn's default request line (4,094 bytes), under ours: served.
        assert served.get("/health?pad=" + "a" * 6000)[0] == 200
        status, body = served.get("/health?pad=" + "a" * MAX_URL)
        assert status == 414, body
        error = json.loads(body)["error"]
        assert error["code"] == "uri_too_long" and error["request_id"] and "the limit is 8000 bytes" in error["message"]
        # Longer than gunicorn reads (8,190 bytes), headers it will not take, a request line it cannot
        # parse: gunicorn refuses them before Django, and still in the error shape.
        port = int(served.base.rsplit(":", 1)[1])
        refused = {
            414: raw_request(port, b"GET /health?pad=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
            431: raw_request(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"),
            400: raw_request(port, b"GET /health HTTP/9\r\nHost: x\r\n\r\n"),
        }
        codes = {414: "uri_too_long", 431: "headers_too_large", 400: "invalid_request"}
        for status, (line, headers, body) in refused.items():
            assert line.split()[1] == str(status).encode(), (line, body)
            assert headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert error["code"] == codes[status] and error["message"], error
            assert error["request_id"] == headers["x-request-id"]
        assert served.get("/health")[0] == 200  # the workers go on serving
    finally:
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=60) == 0, "".join(served.lines)


@pytest.mark.django_db
@pytest.mark.parametrize("query, named", [("from=%ED%A0%80", "from"), ("to=2026-01-0%FF", "to"), ("group_by=d%C3ay", "group_by")])
def test_a_query_parameter_that_is_not_utf8_is_a_400_naming_it(api, alice, query, named):
    response = api.get(f"/v1/usage?{query}", **alice.auth)
    assert response.status_code == 400 and response.json()["error"]["message"].startswith(f"{named}:")


HUGE_INTEGERS = ["9" * 308, "-" + "9" * 308, "1" + "0" * 400]


@pytest.mark.parametrize("number", HUGE_INTEGERS, ids=lambda n: f"{len(n.lstrip('-'))} digits")
@pytest.mark.parametrize("where, body", [
    ("search vector", '{"vector": [%s]}'),
    ("document vector", '{"documents": [{"id": "v", "vector": [%s]}]}'),
    ("filter range", '{"query": "cats", "filter": {"index": {"$gte": %s, "$lt": 1}}}'),
])
def test_integers_too_large_for_a_float_are_a_400_where_floats_are_made_of_them(api, alice, collection, where, body, number):
    api.raise_request_exception = False
    path = "documents" if where == "document vector" else "search"
    numbers = ",".join([number] * 384) if "vector" in where else number
    before = written()
    response = api.post(f"/v1/collections/{collection['id']}/{path}", body % numbers, content_type="application/json",
                        **alice.auth)
    if where == "filter range" and len(number.lstrip("-")) <= 308:
        # A finite bound, compared exactly as jsonb numeric: index ≥ -10^308 and < 1 is index 0; ≥ 10^308 is none.
        assert response.status_code == 200, response.content
        indexes = {hit["metadata"]["index"] for hit in response.json()["results"]}
        assert indexes == ({0} if number.startswith("-") else set())
        return
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["message"].startswith("JSON parse error - an integer of")) in (
        ("invalid_json", True), ("invalid_request", False))
    assert written() == before
