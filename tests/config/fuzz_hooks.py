"""Schemathesis hooks for tests/config/test_fuzz.py (loaded by the `st` process through SCHEMATHESIS_HOOKS).

The schema says what a well-formed request is; a few answers also depend on what exists on the server,
which no schema can say. Just before each request these hooks put real server state where the schema can
only name a type: the ids of the test's own objects in paths, a model slug ("auto") where any string is
well-formed, vectors of the collection's dimension, metadata and filters its schema accepts, a short real
recording as the audio upload. Everything else is sent as generated. The context comes from the test in
MODELGATE_FUZZ_CONTEXT (JSON).
"""
from __future__ import annotations

import json
import math
import os
from datetime import date, timedelta
from typing import Any

import requests
import schemathesis

CONTEXT: dict[str, Any] = json.loads(os.environ.get("MODELGATE_FUZZ_CONTEXT", "{}"))
_AUDIO: dict[str, bytes] = {}


def _audio() -> bytes:
    if "clip" not in _AUDIO:
        with open(CONTEXT["audio"], "rb") as handle:
            _AUDIO["clip"] = handle.read()
    return _AUDIO["clip"]


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set up server state through the API itself, as a client would."""
    response = requests.request(method, CONTEXT["base_url"] + path, json=body, timeout=60,
                                headers={"Authorization": f"Bearer {CONTEXT['key']}"})
    response.raise_for_status()
    return response.json()


def _cancel(job: Any) -> None:
    """Only a stopped job resumes (a queued one is the 409 job_not_resumable): stop it first."""
    if isinstance(job, str):
        requests.post(f"{CONTEXT['base_url']}/v1/jobs/{job}/cancel", timeout=60,
                      headers={"Authorization": f"Bearer {CONTEXT['key']}"})


def _vector(value: Any) -> Any:
    """A generated list of numbers, fitted to the collection's dimension, finite in 32 bits and not zero."""
    if not isinstance(value, list) or not value or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return value
    fitted = [float(x) if math.isfinite(x) and abs(x) <= 1e17 else 0.5 for x in value]
    fitted = (fitted * (CONTEXT["dimension"] // len(fitted) + 1))[: CONTEXT["dimension"]]
    if not any(abs(x) > 1e-30 for x in fitted):  # zero in 32 bits: a cosine collection's 400 (the schema says so)
        fitted[0] = 1.0
    return fitted


def _document(document: Any) -> None:
    if not isinstance(document, dict):
        return
    if "vector" in document:
        document["vector"] = _vector(document["vector"])
    if isinstance(document.get("metadata"), dict):
        # The collection types these two (integer, date): other names take any JSON value.
        for typed in ("index", "published"):
            document["metadata"].pop(typed, None)


def _usage_range(query: dict[str, Any]) -> None:
    """`from` and `to` as a range the report reads: ordered and at most MAX_RANGE_DAYS long."""
    try:
        start = date.fromisoformat(query["from"]) if "from" in query else None
        end = date.fromisoformat(query["to"]) if "to" in query else None
    except (TypeError, ValueError):
        return
    end = end or date.today()
    start = start or end.replace(day=1)
    if start > end:
        start, end = end, start
    end = min(end, start + timedelta(days=CONTEXT["max_range_days"] - 1))
    query["from"], query["to"] = start.isoformat(), end.isoformat()


def _path(case: Any, label: str) -> None:
    parameters = case.path_parameters
    if parameters is None:
        return
    if label == "POST /v1/jobs/{id}/resume" and _phase(case) == "stateful":
        _cancel(parameters.get("id"))
    if _phase(case) == "stateful":
        return  # the stateful phase follows the schema's links: ids come from earlier answers
    if "ref" in parameters:
        parameters["ref"] = CONTEXT["collection"]
    if label == "DELETE /v1/collections/{ref}":
        # Each delete gets a collection of its own to delete (one that brings its vectors: no embedding).
        name = f"scratch-{os.urandom(6).hex()}"
        parameters["ref"] = _call("POST", "/v1/collections", {"name": name, "model": None, "dimension": 3})["id"]
    if "external_id" in parameters:
        parameters["external_id"] = "football-1"  # the deletes by filter take the cats
        if label.startswith("DELETE"):
            parameters["external_id"] = "scratch-doc"
            _call("POST", f"/v1/collections/{CONTEXT['collection']}/documents",
                  {"documents": [{"id": "scratch-doc", "text": "A document to delete."}]})
    if "prefix" in parameters:
        parameters["prefix"] = CONTEXT["prefix"]
    if label == "GET /v1/inferences/{id}":
        parameters["id"] = CONTEXT["inference"]
    elif label.startswith(("GET /v1/jobs/", "POST /v1/jobs/")):
        parameters["id"] = CONTEXT["job"]
        if label.endswith("/resume"):
            _cancel(CONTEXT["job"])


def _phase(case: Any) -> str | None:
    meta = getattr(case, "meta", None)
    return None if meta is None else str(meta.phase.name)


def _body(body: dict[str, Any], label: str) -> None:
    for field in ("model", "rerank_model"):
        if isinstance(body.get(field), str):
            body[field] = "auto"
    if label in ("POST /v1/audio/transcriptions", "POST /v1/intent") and "file" in body:
        body["file"] = _audio()
        if isinstance(body.get("language"), str):
            body["language"] = "en"
    if label == "POST /v1/collections/{ref}/jobs" and "file" in body:
        # An upload the job can read: JSON lines of documents (a file of random bytes is its 400).
        body["file"] = b'{"id": "job-doc-1", "text": "A document from a file."}\n'
        body.pop("format", None)
    if label == "POST /v1/classify":
        if not body.get("labels"):
            body["labels"] = ["finance", "cooking"]  # this deployment has no classifier of fixed labels: its 400
        elif isinstance(body["labels"], list) and all(isinstance(x, str) for x in body["labels"]):
            # Labels equal once trimmed are one label, which a schema cannot say.
            body["labels"] = [f"{label.strip()} {index}" for index, label in enumerate(body["labels"])]
    if label == "POST /v1/translate":
        body.setdefault("source", "eng_Latn")  # detected, a random text's language is seldom one the translator knows
        # The test's translator knows a handful of the languages the API names; others are its 400.
        for field in ("source", "target"):
            if isinstance(body.get(field), str):
                body[field] = CONTEXT["languages"][len(body[field]) % len(CONTEXT["languages"])]
    if label == "POST /v1/collections":
        # Embedded by the default model, so that linked upserts and searches know the dimension (384).
        body["model"] = "auto"
        body.pop("dimension", None)  # measured from the model
    if isinstance(body.get("documents"), list) and label.endswith("/documents"):
        seen: set[Any] = set()
        for index, document in enumerate(body["documents"]):
            _document(document)
            # Ids are unique within a request, which a schema cannot say of one field of its items.
            if isinstance(document, dict) and isinstance(document.get("id"), str):
                if document["id"] in seen:
                    document["id"] = f"{document['id']}-{index}"
                seen.add(document["id"])
    if "vector" in body and label.endswith("/search"):
        body["vector"] = _vector(body["vector"])
    if isinstance(body.get("filter"), dict):
        body["filter"] = {"topic": "cats"}
    if label == "POST /v1/feedback" and isinstance(body.get("request_id"), str):
        body["request_id"] = CONTEXT["request_id"]
    if label == "PATCH /v1/budget":
        if isinstance(body.get("webhook_url"), str):
            body["webhook_url"] = ""  # a real address would be called; none of ours listens
        if body.get("alert_email"):
            body["alert_email"] = "billing@alpha.example"
        if body.get("rotate_webhook_secret") is True and not body.get("webhook_url"):
            # No webhook is set, so there is no secret to rotate (its 400): set an address instead.
            body["rotate_webhook_secret"] = False
            body["alert_email"] = "billing@alpha.example"


def _without_nul(value: Any) -> Any:
    """The coverage phase walks through every character, U+0000 too (--generation-allow-x00 binds only the
    random phase); the API refuses NUL in any string with a 400 naming the field (the schema says so)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    return value


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    label = case.operation.label
    _path(case, label)
    if isinstance(case.body, dict):
        if case.meta is not None and case.meta.generation.mode.is_positive:
            case.body = _without_nul(case.body)
        _body(case.body, label)
    if label == "GET /v1/usage" and isinstance(case.query, dict):
        _usage_range(case.query)
