"""The schema's promises, checked against the code that keeps them: every operation lists the statuses its
view can answer, each error in the one error shape of core/errors.py, and request bodies are as strict as
the serializers that read them. The live API is held to the same schema by tests/config/test_fuzz.py."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from rest_framework import serializers

from billing import serializers as billing_serializers
from core.errors import error_body
from core.logs import current_request_id
from embeddings import serializers as embeddings_serializers
from embeddings.models import METADATA_TYPES, NAME_PATTERN
from routing import serializers as routing_serializers
from tenants import openapi

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    from drf_spectacular.generators import SchemaGenerator

    with django_db_blocker.unblock():
        generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(json.dumps(generated, default=str))


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def resolved(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def error_validator(schema: dict) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schema["components"]["schemas"]["Error"])


def test_every_error_status_is_in_the_one_error_shape(schema):
    for path, method, operation in operations(schema):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                body = response["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/Error"}, (method, path, status)
                assert response["description"], (method, path, status)


def test_every_authenticated_operation_documents_401_403_and_429(schema):
    for path, method, operation in operations(schema):
        assert operation.get("security") == [{"ApiKey": []}], (method, path)
        assert {"401", "403", "429", "414"} <= operation["responses"].keys(), (method, path)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        assert "Retry-After" in operation["responses"]["429"]["headers"]


def test_every_operation_with_a_path_parameter_documents_404(schema):
    checked = 0
    for path, method, operation in operations(schema):
        if "{" in path:
            assert {"400", "404"} <= operation["responses"].keys(), (method, path)
            checked += 1
    assert checked >= 14


def test_every_operation_with_a_body_documents_400_413_and_415(schema):
    bodies = 0
    for path, method, operation in operations(schema):
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= operation["responses"].keys(), (method, path)
            bodies += 1
        elif "{" not in path and not operation.get("parameters"):
            assert "413" not in operation["responses"] and "400" not in operation["responses"], (method, path)
    assert bodies >= 15


def test_operations_that_run_models_document_402_and_502_and_all_document_503(schema):
    routed = {"/v1/translate", "/v1/detect-language", "/v1/classify", "/v1/embeddings", "/v1/rerank",
              "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/intent", "/v1/collections",
              "/v1/collections/{ref}/documents", "/v1/collections/{ref}/search"}
    for path, method, operation in operations(schema):
        runs_a_model = method == "post" and path in routed
        assert ({"402", "502"} <= operation["responses"].keys()) == runs_a_model, (method, path)
        # Every operation reads the database, whose loss is a 503; a model's operation says more of it.
        assert ("no_model_available" in operation["responses"]["503"]["description"]) == runs_a_model, (method, path)
        assert "database_unavailable" in operation["responses"]["503"]["description"], (method, path)
        assert "Retry-After" in operation["responses"]["503"]["headers"], (method, path)


def test_conflicts_and_objects_named_in_the_body_are_documented_where_the_views_raise_them(schema):
    paths = schema["paths"]
    assert "409" in paths["/v1/collections"]["post"]["responses"]
    assert "409" in paths["/v1/collections/{ref}/documents"]["post"]["responses"]
    assert "404" in paths["/v1/feedback"]["post"]["responses"]
    assert "404" in paths["/v1/budget"]["patch"]["responses"]
    assert "404" not in paths["/v1/budget"]["get"]["responses"]  # no budget is a 200 saying so


def test_answers_that_are_not_json_are_documented(schema):
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= chat.keys()
    transcript = schema["paths"]["/v1/audio/transcriptions"]["post"]["responses"]["200"]["content"]
    assert {"application/json", "text/plain"} <= transcript.keys()


def test_the_error_component_matches_what_errors_py_writes(schema):
    validator = error_validator(schema)
    token = current_request_id.set("req-1234567890")
    try:
        validator.validate(error_body("invalid_request", "texts.0: Must not be blank.", {"texts": {"0": ["Must not be blank."]}}))
        validator.validate(error_body("not_found", "Not found."))
    finally:
        current_request_id.reset(token)
    assert not validator.is_valid({"error": {"code": "x", "message": "y"}})  # a request id always comes
    assert not validator.is_valid({"detail": "Not found."})  # DRF's own shape never does


@pytest.mark.django_db
def test_real_error_answers_match_the_error_component(api, alice, schema):
    validator = error_validator(schema)
    answers = [
        api.get("/v1/me"),  # 401
        api.get("/v1/collections/no-such-collection", **alice.auth),  # 404
        api.post("/v1/translate", json.dumps({"text": " ", "target": "de"}), content_type="application/json", **alice.auth),
        api.post("/v1/translate", "{", content_type="application/json", **alice.auth),  # invalid JSON
        api.post("/v1/translate", "text=hi", content_type="text/csv", **alice.auth),  # 415
        api.get("/v1/keys/%00", **alice.auth),  # a NUL in the path, refused below DRF
    ]
    assert [answer.status_code for answer in answers] == [401, 404, 400, 400, 415, 400]
    for answer in answers:
        validator.validate(answer.json())
        assert answer.json()["error"]["request_id"] == answer["x-request-id"]


def request_serializers() -> dict[str, type[serializers.Serializer]]:
    """Every request serializer of the API, by the component name the schema gives it."""
    found = {}
    for module in (routing_serializers, embeddings_serializers, billing_serializers):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, serializers.Serializer) and value.__module__ == module.__name__:
                found[name.removesuffix("Serializer")] = value
    return found


def rejects_whitespace(field: serializers.Field) -> bool:
    try:
        copy.deepcopy(field).run_validation(" ")
    except serializers.ValidationError:
        return True
    return False


def request_components(schema: dict) -> set[str]:
    """Names of the components that request bodies use, nested ones included."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            name = ref.rsplit("/", 1)[-1]
            if ref and name not in found:
                found.add(name)
                walk(schema["components"]["schemas"][name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for _, _, operation in operations(schema):
        walk(operation.get("requestBody", {}))
    return found


def test_request_bodies_carry_the_limits_their_serializers_enforce(schema):
    components = schema["components"]["schemas"]
    bodies = request_components(schema)
    used = {name: cls for name, cls in request_serializers().items() if name in bodies}
    used["PatchedAlertSettings"] = billing_serializers.AlertSettingsSerializer
    assert {"Translate", "ChatCompletion", "ChatMessage", "Document", "Upsert", "Search", "Audio", "Intent",
            "CollectionCreate", "DeleteDocuments", "Feedback", "Embeddings", "Rerank"} <= used.keys()
    checked = 0
    for name, cls in used.items():
        properties = components[name]["properties"]
        for field_name, field in cls().fields.items():
            if field.read_only or field_name not in properties:
                continue
            prop = resolved(schema, properties[field_name])
            where = f"{name}.{field_name}"
            fields = [(where, field, prop)]
            if isinstance(field, serializers.ListField) and "items" in prop:
                fields.append((f"{where}[]", field.child, resolved(schema, prop["items"])))
            for label, each, each_prop in fields:
                checked += check_field(label, each, each_prop)
    assert checked >= 40


def check_field(label: str, field: serializers.Field, prop: dict) -> int:
    if isinstance(field, serializers.CharField) and "enum" not in prop and "allOf" not in prop and "oneOf" not in prop:
        if not field.allow_blank:
            assert prop.get("minLength", 0) >= 1, label
        if rejects_whitespace(field):
            assert "pattern" in prop or "format" in prop, label  # \S, or a stricter one
        if field.max_length is not None:
            assert prop.get("maxLength") is not None and prop["maxLength"] <= field.max_length, label
        return 1
    if isinstance(field, serializers.IntegerField):
        if field.min_value is not None:
            assert prop.get("minimum", float("-inf")) >= field.min_value, label
        if field.max_value is not None:
            assert prop.get("maximum", float("inf")) <= field.max_value, label
        return 1
    if isinstance(field, (serializers.ListField, serializers.ListSerializer)):
        if not field.allow_empty:
            assert prop.get("minItems", 0) >= 1, label
        if getattr(field, "max_length", None) is not None:
            assert prop.get("maxItems", float("inf")) <= field.max_length, label
        if getattr(field, "min_length", None) is not None:
            assert prop.get("minItems", 0) >= field.min_length, label
        return 1
    return 0


def test_rules_no_field_can_state_are_in_the_schema(schema):
    components = schema["components"]["schemas"]
    for name in ("Translate", "DetectLanguage", "Classify"):
        assert components[name]["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}], name
    assert components["DeleteDocuments"]["oneOf"] == [{"required": ["ids"]}, {"required": ["filter"]}]
    # An ingestion job: a file as a multipart form, or documents as JSON; each media type carries only its own.
    assert components["JobCreateUpload"]["required"] == ["file"] and "documents" not in components["JobCreateUpload"]["properties"]
    assert components["JobCreateJson"]["required"] == ["documents"] and "file" not in components["JobCreateJson"]["properties"]
    assert {"required": ["query"]} in components["Search"]["anyOf"]
    assert components["Audio"]["properties"]["file"]["format"] == "binary"
    # Copies of what tenants may not import (embeddings sits above it) stay equal to the originals.
    assert openapi.COLLECTION_NAME_PATTERN == NAME_PATTERN.pattern
    assert openapi.METADATA_TYPES == METADATA_TYPES


def test_the_schema_validates_its_own_examples_of_valid_bodies(schema):
    """Bodies the API accepts (tests/routing/test_permissions.py) are valid by the schema, and the
    refused ones that a field's type cannot show are invalid by it."""
    def valid(component: str, body: dict) -> bool:
        node = copy.deepcopy(schema["components"]["schemas"][component])
        node["components"] = schema["components"]  # where the component's $refs point
        return jsonschema.Draft7Validator(node).is_valid(body)

    assert valid("Translate", {"text": "Hello world", "source": "eng_Latn", "target": "deu_Latn"})
    assert not valid("Translate", {"target": "deu_Latn"})  # neither text nor texts
    assert not valid("Translate", {"text": "a", "texts": ["b"], "target": "deu_Latn"})  # both
    assert not valid("Translate", {"text": "   ", "target": "deu_Latn"})
    assert not valid("Translate", {"text": "\x1d\x85", "target": "deu_Latn"})  # whitespace to str.strip() too
    assert valid("Classify", {"text": "Shares fell", "labels": ["finance", "cooking"]})
    assert not valid("Classify", {"text": "Shares fell", "labels": ["finance", "finance"]})
    assert valid("ChatCompletion", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    assert not valid("ChatCompletion", {"messages": []})
    assert not valid("ChatCompletion", {"messages": [{"role": "user", "content": " "}]})
    assert valid("Embeddings", {"input": ["a", "b"]})
    assert not valid("Embeddings", {"input": [1, 2]})
    assert valid("Search", {"query": "cats", "k": 3})
    assert not valid("Search", {"vector": [0.1], "hybrid": True})
    assert valid("Upsert", {"documents": [{"id": "dogs-0", "text": "The dog."}]})
    assert not valid("Upsert", {"documents": [{"id": "dogs-0", "text": " "}]})
    assert not valid("CollectionCreate", {"name": "-bad"})


def test_links_say_where_ids_lead(schema):
    created = schema["paths"]["/v1/collections"]["post"]["responses"]["201"]["links"]
    assert created["UpsertDocuments"] == {"operationId": "collections_documents_create", "parameters": {"ref": "$response.body#/id"}}
    upserted = schema["paths"]["/v1/collections/{ref}/documents"]["post"]["responses"]["200"]["links"]
    assert upserted["GetDocument"]["parameters"]["external_id"] == "$request.body#/documents/0/id"
    operation_ids = {operation["operationId"] for _, _, operation in operations(schema)}
    for _, _, operation in operations(schema):
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                assert link["operationId"] in operation_ids


def test_bodies_are_required_and_json_unless_they_are_uploads(schema):
    for path, method, operation in operations(schema):
        if "requestBody" not in operation:
            continue
        assert operation["requestBody"]["required"] is True, (method, path)
        media = set(operation["requestBody"]["content"])
        uploads = path in ("/v1/audio/transcriptions", "/v1/intent", "/v1/collections/{ref}/jobs")
        assert media == ({"multipart/form-data"} | ({"application/json"} if path.endswith("/jobs") else set())
                         if uploads else {"application/json"}), (method, path)
