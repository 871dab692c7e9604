"""A database that cannot be reached is a 503 `database_unavailable` with Retry-After in the one error
shape, from DRF views and from the layers below them (middleware: rate limits, the database cache) alike;
any other failure stays a 500. The outage itself, end to end, is tests/faults/test_real_servers.py."""
from __future__ import annotations

import json

import pytest
from django.db import InterfaceError, OperationalError
from django.test import RequestFactory

from core.errors import exception_handler, handler500
from core.logs import current_request_id


@pytest.mark.parametrize("error", [OperationalError("connection refused"), InterfaceError("connection already closed")])
def test_a_view_that_loses_the_database_answers_503_to_retry(error):
    token = current_request_id.set("db-down-view-01")
    try:
        response = exception_handler(error, {})
    finally:
        current_request_id.reset(token)
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.data == {"error": {"code": "database_unavailable", "request_id": "db-down-view-01",
                                       "message": "The database cannot be reached right now; retry shortly."}}


@pytest.mark.parametrize("error", [OperationalError("the database system is starting up"), InterfaceError("closed")])
def test_middleware_that_loses_the_database_answers_503_too(error):
    request = RequestFactory().post("/v1/chat/completions")
    try:
        raise error
    except type(error):
        response = handler500(request)
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert json.loads(response.content)["error"]["code"] == "database_unavailable"


def test_any_other_failure_is_still_a_500():
    request = RequestFactory().get("/v1/me")
    try:
        raise ZeroDivisionError
    except ZeroDivisionError:
        response = handler500(request)
    assert response.status_code == 500 and "Retry-After" not in response
    assert json.loads(response.content)["error"]["code"] == "internal_error"
    assert exception_handler(ZeroDivisionError(), {}) is None  # a bug: Django logs it and answers 500
