"""The OpenAPI schema tells the truth: every status an operation can answer, in the one error shape, and
request bodies as strict as the serializers that check them.

Statuses are read from what each view does (its authentication, permissions, throttles, path, query and
body, and whether it runs a model), not listed per view; the few facts no rule can see (a 409 a service
raises, a 404 for an object named in the body) are in EXTRA_ERRORS. Request bodies carry the limits their
serializers enforce: a string that must hold more than whitespace gets `minLength: 1` and a pattern that
needs a character `strip()` keeps, a list that may not be empty `minItems: 1`, and the rules written in
`validate_*` methods are in _body_rules(). A client generated from the schema knows every answer it can
get, and the fuzz test (tests/config/test_fuzz.py) holds the server to it.
"""
from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from tenants.models import Scope

ERROR_COMPONENT = "Error"

# {"error": {"code", "message", "request_id"[, "details"]}}: what core.errors.error_body writes.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The one error shape of every /v1 answer that is not a success.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "A stable machine code, e.g. invalid_request, missing_scope."},
                "message": {"type": "string", "description": "A sentence for people; names the offending field first."},
                "request_id": {"type": "string", "description": "Also in the x-request-id header; quote it to operators."},
                "details": {"description": "For invalid_request: the serializer's errors by field."},
            },
            "required": ["code", "message", "request_id"],
            "additionalProperties": False,
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}

# Scopes whose operations run a model: the router may refuse for money (402), tokens per minute (429),
# a provider that failed (502) or no model able to serve now (503).
MODEL_SCOPES = {Scope.TRANSLATE, Scope.DETECT_LANGUAGE, Scope.CLASSIFY, Scope.EMBEDDINGS, Scope.RERANK,
                Scope.CHAT, Scope.AUDIO}

ROUTED = "routed"  # marks an operation of EXTRA_ERRORS that runs a model although its scope does not say so

# What a rule cannot see: (view class, method) -> statuses with the reason each is answered.
EXTRA_ERRORS: dict[tuple[str, str], dict[int | str, str]] = {
    ("CollectionsView", "post"): {409: "A collection of this name already exists (conflict).",
                                  ROUTED: "the model measures its dimension with one embedding"},
    ("DocumentsView", "post"): {409: "The documents keep changing under concurrent writes; retry (conflict).",
                                ROUTED: "texts are embedded"},
    ("JobResumeView", "post"): {409: "The job is queued, running or finished: only a failed or cancelled job "
                                     "resumes (job_not_resumable)."},
    ("SearchView", "post"): {ROUTED: "the query is embedded, and reranked on request"},
    ("FeedbackView", "post"): {404: "No answered request has this request_id for this tenant (not_found)."},
    ("BudgetView", "patch"): {404: "No budget is set for this tenant; an operator sets one (not_found)."},
}

REASONS: dict[int, str] = {
    400: "The request is not valid: the message names the first offending field (invalid_request, invalid_json, "
         "a NUL character in the URL, or a code of the operation such as unknown_model or invalid_audio).",
    401: "No API key, or one that is malformed, unknown, revoked or expired (not_authenticated, invalid_api_key, "
         "malformed_api_key, malformed_authorization, key_revoked, key_expired).",
    402: "The tenant's budget cannot cover the request (budget_exceeded).",
    403: "The key lacks the scope or may not use the model, or the tenant is suspended (missing_scope, "
         "permission_denied, tenant_suspended).",
    404: "No such object for this tenant: another tenant's is as missing as one that never existed (not_found).",
    409: "Conflict.",
    413: "The body, or a batch's total text, is larger than the configured limit (request_too_large).",
    414: "The URL is longer than MODELGATE_MAX_URL_BYTES (uri_too_long).",
    415: "The body's Content-Type is not one the operation reads (unsupported_media_type).",
    429: "Too many requests or tokens per minute for the key or tenant; Retry-After says when to come back (rate_limited).",
    502: "Every candidate model failed upstream (upstream_failed).",
    503: "No model can serve this now, the provider is rate limiting, or the database cannot be reached; retry "
         "after Retry-After when given (no_model_available, upstream_rate_limited, database_unavailable).",
}

DATABASE_DOWN = "The database cannot be reached right now; retry after Retry-After (database_unavailable)."

HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer realm="modelgate"'}},
    429: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before retrying."}},
    503: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before retrying, when known."}},
}

# Success answers that are not JSON (the operation's view decides by a body field).
EXTRA_SUCCESS_CONTENT: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("ChatCompletionsView", "post"): {"text/event-stream": {"schema": {
        "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}},
        "description": "With stream=true, one server-sent event: data is a chat.completion.chunk as JSON, and [DONE] last."}}},
    ("TranscriptionsView", "post"): {"text/plain": {
        "schema": {"type": "string", "description": "With response_format=text: the transcript alone."}}},
}

# embeddings.models' NAME_PATTERN and METADATA_TYPES, restated: tenants sits below embeddings and may not
# import it. tests/config/test_openapi_rules.py holds the copies equal.
COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
METADATA_TYPES = ("string", "number", "integer", "boolean", "date")

# OpenAPI links: where an answer's ids lead (clients and the stateful fuzzer follow them).
_COLLECTION = {"ref": "$response.body#/id"}
_INFERENCE = {"GetInference": {"operationId": "inferences_retrieve", "parameters": {"id": "$response.body#/inference_id"},
                               "description": "The record of this request: model, tier, cost and routing reason."}}
LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("CollectionsView", "post"): {
        "GetCollection": {"operationId": "collections_retrieve", "parameters": _COLLECTION},
        "UpsertDocuments": {"operationId": "collections_documents_create", "parameters": _COLLECTION},
        "SearchCollection": {"operationId": "collections_search_create", "parameters": _COLLECTION},
        "ListJobs": {"operationId": "collections_jobs_list", "parameters": _COLLECTION},
    },
    ("DocumentsView", "post"): {
        "GetDocument": {"operationId": "collections_documents_retrieve",
                        "parameters": {"ref": "$request.path.ref", "external_id": "$request.body#/documents/0/id"}},
    },
    ("JobsView", "post"): {
        "GetJob": {"operationId": "jobs_retrieve", "parameters": {"id": "$response.body#/id"}},
        "CancelJob": {"operationId": "jobs_cancel_create", "parameters": {"id": "$response.body#/id"}},
    },
    ("TranslateView", "post"): _INFERENCE,
    ("DetectLanguageView", "post"): _INFERENCE,
    ("ClassifyView", "post"): _INFERENCE,
    ("RerankView", "post"): _INFERENCE,
    ("IntentView", "post"): _INFERENCE,
}

# Holds a character str.strip() keeps: not whitespace for Python, whose whitespace is ECMAScript's \s plus
# U+001C-U+001F and U+0085 (U+FEFF, which \s counts, makes the pattern only stricter).
NOT_BLANK_PATTERN = r"[^\s\u001c-\u001f\u0085]"
NON_BLANK: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": NOT_BLANK_PATTERN}


def _non_blank(**limits: Any) -> dict[str, Any]:
    return {**NON_BLANK, **limits}


def _body_rules() -> dict[str, dict[str, Any]]:
    """Rules the serializers' `validate_*` methods enforce, by serializer class name: `properties`
    replace or extend a property's schema, the other keys join the object's schema. Limits come from
    settings, so the schema states this deployment's."""
    from inference.languages import NLLB_CODES

    batch = settings.MODELGATE_MAX_BATCH_ITEMS
    per_request = settings.MODELGATE_COLLECTION_DOCUMENTS_PER_REQUEST
    text_limit = settings.MODELGATE_COLLECTION_MAX_TEXT_CHARACTERS
    one_or_many = {"oneOf": [{"required": ["text"]}, {"required": ["texts"]}],
                   "properties": {"texts": {"maxItems": batch}}}
    language = {"type": "string", "enum": list(NLLB_CODES),
                "description": "A FLORES-200 code ('fra_Latn'); ISO 639-1/639-3 spellings ('fr', 'fra') are read too."}
    metadata = {"type": "object", "additionalProperties": True, "description": "Metadata of the document, checked against the collection's schema."}
    filter_ = {"type": "object", "description": 'Metadata filter: {"lang": "en", "year": {"$gte": 2020}}.'}
    # The server bounds a vector's squared length (distances are 32-bit); numbers within ±1e17 always keep it.
    vector = {"type": "array", "items": {"type": "number", "minimum": -1e17, "maximum": 1e17}, "minItems": 1,
              "maxItems": settings.MODELGATE_COLLECTION_MAX_DIMENSION,
              "description": "As many numbers as the collection's dimension; not all zero for cosine collections."}
    return {
        "OneOrManyTexts": one_or_many,
        "TranslateSerializer": {**one_or_many, "properties": {**one_or_many["properties"], "target": language, "source": language}},
        "EmbeddingsSerializer": {"properties": {"input": {
            "oneOf": [_non_blank(), {"type": "array", "items": _non_blank(), "minItems": 1, "maxItems": batch}],
            "description": "A text, or a list of texts (token arrays are not accepted)."}}},
        "ChatMessageSerializer": {"properties": {"content": {
            "oneOf": [_non_blank(), {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["type", "text"],
                "properties": {"type": {"type": "string", "enum": ["text"]}, "text": _non_blank()}}}],
            "description": "Text, or a list of text parts (joined)."}}},
        "ChatCompletionSerializer": {"properties": {
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": settings.MODELGATE_MAX_OUTPUT_TOKENS},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": settings.MODELGATE_MAX_OUTPUT_TOKENS},
            "stop": {"oneOf": [{"type": "string", "minLength": 1},
                               {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4}],
                     "description": "A string or up to 4 strings that end the answer."},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        }},
        "DocumentSerializer": {
            "properties": {"id": _non_blank(maxLength=256), "text": {"type": "string", "maxLength": text_limit},
                           "metadata": metadata,
                           "vector": vector},
            "anyOf": [{"required": ["vector"]}, {"required": ["text"], "properties": {"text": NON_BLANK}}],
            "description": "A text to embed, or a vector of the collection's dimension (or both).",
        },
        "UpsertSerializer": {"properties": {"documents": {
            "maxItems": per_request, "uniqueItems": True,
            "description": "Each id at most once in a request (a repeated id is a 400 naming it)."}}},
        "ClassifySerializer": {**one_or_many, "properties": {**one_or_many["properties"], "labels": {
            "uniqueItems": True, "description": "2 to 100 distinct candidate labels (distinct once trimmed): zero-shot."}}},
        "CollectionCreateSerializer": {"properties": {
            "name": {"type": "string", "pattern": COLLECTION_NAME_PATTERN, "minLength": 1, "maxLength": 100,
                     "description": "Letters, digits, '.', '_' and '-', starting with a letter or digit; not a UUID."},
            "dimension": {"type": "integer", "minimum": 1, "maximum": settings.MODELGATE_COLLECTION_MAX_DIMENSION},
            "metadata_schema": {"type": "object", "additionalProperties": {"type": "string", "enum": list(METADATA_TYPES)},
                                "description": "Optional types of metadata fields."},
        }},
        "DeleteDocumentsSerializer": {
            "properties": {"ids": {"maxItems": per_request}, "filter": {**filter_, "minProperties": 1}},
            "oneOf": [{"required": ["ids"]}, {"required": ["filter"]}],
        },
        "SearchSerializer": {
            "properties": {"query": _non_blank(maxLength=text_limit), "filter": filter_, "vector": vector},
            # hybrid and rerank read the query text: without one, both stay off.
            "anyOf": [{"required": ["query"]},
                      {"required": ["vector"], "not": {"anyOf": [{"required": ["hybrid"]}, {"required": ["rerank"]}]}}],
        },
        "JobCreateSerializer": {"oneOf": [{"required": ["file"]}, {"required": ["documents"]}]},
        "AlertSettingsSerializer": {"anyOf": [{"required": ["alert_email"]}, {"required": ["webhook_url"]},
                                              {"required": ["rotate_webhook_secret"],
                                               "properties": {"rotate_webhook_secret": {"enum": [True]}}}]},
    }


class ModelgateAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the error statuses each operation can answer and the request
    rules its serializers enforce."""

    def get_operation(self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        reference = self._error_component().ref
        responses = operation["responses"]
        for status, reason in sorted(self.error_statuses(operation).items()):
            response: dict[str, Any] = {"description": reason, "content": {"application/json": {"schema": reference}}}
            if status in HEADERS:
                response["headers"] = copy.deepcopy(HEADERS[status])
            responses.setdefault(str(status), response)
        success = next(code for code in sorted(responses) if code.startswith("2"))
        extra = EXTRA_SUCCESS_CONTENT.get(self._view_method())
        if extra:
            responses[success].setdefault("content", {}).update(copy.deepcopy(extra))
        links = LINKS.get(self._view_method())
        if links:
            responses[success]["links"] = copy.deepcopy(links)
        return operation

    def map_parsers(self) -> list[Any]:
        # Bodies are JSON: the form parsers are there for the uploads, whose views name multipart/form-data
        # themselves. A nested body (documents, messages) cannot be a form, so the schema promises JSON.
        return ["application/json"]

    def _get_request_body(self, direction: str = "request") -> dict[str, Any] | None:
        body = super()._get_request_body(direction)
        if body is not None:
            # No body-reading operation here does anything with an empty body but refuse it.
            body["required"] = True
            content = body["content"]
            if "multipart/form-data" in content and "application/json" in content:
                # One serializer for both: a form holds files and scalars, not lists of objects (an ingestion
                # job's `documents`), and JSON holds no files.
                for media, suffix, unfit in (("multipart/form-data", "Upload", _nested), ("application/json", "Json", _binary)):
                    if "$ref" in content[media].get("schema", {}):
                        name = content[media]["schema"]["$ref"].rsplit("/", 1)[1]
                        content[media]["schema"] = self._carried(name, suffix, unfit)
        return body

    def _carried(self, name: str, suffix: str, unfit: Any) -> dict[str, Any]:
        """A body component without the fields its media type cannot carry; alternatives needing one go."""
        component = self.registry._components[(name, ResolvedComponent.SCHEMA)]
        schema = copy.deepcopy(component.schema)
        dropped = {field for field, prop in schema.get("properties", {}).items() if unfit(prop)}
        if not dropped:
            return component.ref
        for field in dropped:
            schema["properties"].pop(field)
        schema["required"] = [field for field in schema.get("required", []) if field not in dropped]
        for keyword in ("oneOf", "anyOf"):
            kept = [option for option in schema.pop(keyword, []) if not set(option.get("required", [])) & dropped]
            if len(kept) == 1:
                schema["required"] = sorted({*schema["required"], *kept[0].get("required", [])})
            elif kept:
                schema[keyword] = kept
        upload = ResolvedComponent(name=f"{name}{suffix}", type=ResolvedComponent.SCHEMA, object=f"{name}{suffix}", schema=schema)
        self.registry.register_on_missing(upload)
        return upload.ref

    def _view_method(self) -> tuple[str, str]:
        return type(self.view).__name__, self.method.lower()

    def _error_component(self) -> ResolvedComponent:
        component = ResolvedComponent(name=ERROR_COMPONENT, type=ResolvedComponent.SCHEMA,
                                      object=ERROR_COMPONENT, schema=copy.deepcopy(ERROR_SCHEMA))
        self.registry.register_on_missing(component)
        return component

    def error_statuses(self, operation: dict[str, Any]) -> dict[int, str]:
        """Status -> why, from what the view does."""
        view = self.view
        # Any operation reads the database: one that cannot be reached is a 503 to retry (core.errors).
        found: dict[int, str] = {414: REASONS[414], 503: DATABASE_DOWN}
        locations = {parameter["in"] for parameter in operation.get("parameters", [])}
        if view.get_authenticators():
            found[401] = REASONS[401]
        if view.get_permissions():
            found[403] = REASONS[403]
        if view.get_throttles():
            found[429] = REASONS[429]
        if "path" in locations:
            found[404] = REASONS[404]
        if "requestBody" in operation:
            found.update({status: REASONS[status] for status in (400, 413, 415)})
        if locations:
            found[400] = REASONS[400]
        extra = dict(EXTRA_ERRORS.get(self._view_method(), {}))
        if getattr(view, "required_scope", None) in MODEL_SCOPES or extra.pop(ROUTED, None):
            found.update({status: REASONS[status] for status in (402, 429, 502, 503)})
        for status, reason in extra.items():
            found[int(status)] = f"{found[int(status)]} {reason}" if int(status) in found else reason
        return found

    def _get_serializer_name(self, serializer: Any, direction: str, bypass_extensions: bool = False) -> str:
        # Request bodies keep their plain names (Search, not SearchRequest): no serializer here is both read
        # and written, and clients already know these names.
        name = super()._get_serializer_name(serializer, direction, bypass_extensions)
        return name.removesuffix("Request") if direction == "request" and name != "Request" else name

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> dict[str, Any]:
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction != "request" or not isinstance(schema, dict):
            return schema
        if isinstance(field, serializers.CharField) and not field.allow_blank and schema.get("type") == "string" \
                and not {"enum", "format", "pattern"} & schema.keys() and _rejects_whitespace(field):
            schema.update(minLength=max(1, schema.get("minLength", 1)), pattern=NOT_BLANK_PATTERN)
        if isinstance(field, (serializers.ListField, serializers.ListSerializer)) and not field.allow_empty \
                and schema.get("type") == "array":
            schema["minItems"] = max(1, schema.get("minItems", 1))
        return schema

    def _map_basic_serializer(self, serializer: Any, direction: str) -> dict[str, Any]:
        schema = super()._map_basic_serializer(serializer, direction)
        if direction != "request":
            return schema
        rules = _body_rules()
        for cls in reversed(type(serializer).__mro__):
            rule = rules.get(cls.__name__)
            if rule is None:
                continue
            for name, patch in rule.get("properties", {}).items():
                target = schema.setdefault("properties", {}).setdefault(name, {})
                if "type" in patch or "oneOf" in patch:  # a full schema: keep only the description
                    description = target.get("description")
                    target.clear()
                    if description:
                        target["description"] = description
                target.update(copy.deepcopy(patch))
            schema.update({key: copy.deepcopy(value) for key, value in rule.items() if key != "properties"})
        return schema


def _nested(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "object" or prop.get("items", {}).get("type") == "object"


def _binary(prop: dict[str, Any]) -> bool:
    return prop.get("format") == "binary"


def _rejects_whitespace(field: serializers.CharField) -> bool:
    """Whether the field itself refuses whitespace-only text (a trimming CharField finds it blank; a text
    field may check `strip()`): asked of the field, so the schema says what the code does."""
    try:
        copy.deepcopy(field).run_validation(" ")
    except serializers.ValidationError:
        return True
    return False


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "mg_<prefix>_<secret>",
            "description": "An API key, as `Authorization: Bearer mg_…` (or the same key in `x-api-key`).",
        }
