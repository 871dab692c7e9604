"""Request ids, the one error shape, the body size limit and the JSON access log."""
import io
import json
import logging

import pytest


@pytest.mark.django_db
def test_a_well_formed_request_id_is_kept(api):
    response = api.get("/health", HTTP_X_REQUEST_ID="client-trace-0001")
    assert response["x-request-id"] == "client-trace-0001"


@pytest.mark.django_db
@pytest.mark.parametrize("supplied", ["short", "has spaces in it", "x" * 200, "bad\nnewline-header"])
def test_a_malformed_request_id_is_replaced(api, supplied):
    response = api.get("/health", HTTP_X_REQUEST_ID=supplied)
    assert response["x-request-id"] != supplied
    assert len(response["x-request-id"]) == 32


@pytest.mark.django_db
def test_errors_carry_the_request_id_in_the_body_and_header(api):
    response = api.get("/v1/me", HTTP_X_REQUEST_ID="trace-for-an-error")
    assert response.status_code == 401
    assert response.json()["error"]["request_id"] == "trace-for-an-error"
    assert response["x-request-id"] == "trace-for-an-error"


@pytest.mark.django_db
def test_an_unknown_api_route_is_a_json_404(api):
    response = api.get("/v1/no-such-thing")
    assert response.status_code == 404
    body = response.json()
    assert body["error"]["code"] == "not_found"
    assert set(body["error"]) == {"code", "message", "request_id"}


@pytest.mark.django_db
def test_a_body_over_the_limit_is_refused_with_413(api, alice, settings):
    settings.MODELGATE_MAX_REQUEST_BYTES = 2048
    response = api.post("/v1/me", data="x" * 4096, content_type="application/json", **alice.auth)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "4096 bytes" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_a_wrong_method_is_405_in_the_error_shape(api, alice):
    response = api.delete("/v1/me", **alice.auth)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.fixture
def log_output():
    """The configured console handler (JSON formatter and request-id filter), writing into a buffer."""
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.filters)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous)


@pytest.mark.django_db
def test_every_log_line_is_json_with_the_request_id(api, alice, log_output):
    api.get("/v1/me", HTTP_X_REQUEST_ID="trace-in-the-logs", **alice.auth)
    logging.getLogger("modelgate.test").warning("outside any request")
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    access = [line for line in lines if line.get("logger") == "modelgate.access"]
    assert access, "no access log line was written"
    assert access[-1]["request_id"] == "trace-in-the-logs"
    assert access[-1]["path"] == "/v1/me"
    assert access[-1]["status"] == 200
    assert access[-1]["tenant"] == "alpha"
    assert access[-1]["level"] == "INFO"
    assert lines[-1]["message"] == "outside any request" and lines[-1]["request_id"] is None
