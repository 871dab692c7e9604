"""The one error shape, {"error": {"code", "message", "request_id"}}, and the exceptions that produce it."""
from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from core.logs import current_request_id

logger = logging.getLogger("modelgate.errors")


class ApiError(exceptions.APIException):
    """Base of the project's typed errors: a status, a stable machine code and a sentence for people."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_request"
    default_detail = "The request is not valid."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ):
        super().__init__(message or self.default_detail, code or self.default_code)
        self.error_code = code or self.default_code
        self.headers = headers or {}
        self.details = details


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"
    default_detail = "Not found."


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


# A database that cannot be reached (stopped, restarting, failing over) is a 503 to retry, not a bug.
DATABASE_DOWN = (OperationalError, InterfaceError)
DATABASE_RETRY_AFTER_SECONDS = 5


class DatabaseUnavailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "database_unavailable"
    default_detail = "The database cannot be reached right now; retry shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})


# Codes for DRF's own exceptions, so that clients see one vocabulary.
_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "invalid_api_key",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "invalid_json",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid_request",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "request_id": current_request_id.get()}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(status_code: int, code: str, message: str) -> JsonResponse:
    """For the layers below DRF (middleware, URL resolution)."""
    return JsonResponse(error_body(code, message), status=status_code)


def _validation_message(detail: Any) -> str:
    """Name the first offending field: `texts.0: This field may not be blank.`"""

    def first(value: Any, path: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
        if isinstance(value, dict):
            for field, inner in value.items():
                return first(inner, path if field == "non_field_errors" else path + (str(field),))
        if isinstance(value, list):
            for index, inner in enumerate(value):
                if inner:
                    return first(inner, path + (str(index),) if isinstance(inner, (dict, list)) else path)
        return path, str(value)

    path, message = first(detail, ())
    return f"{'.'.join(path)}: {message}" if path else message


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    headers: dict[str, str] = {}
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge("The request body is larger than the configured limit.")
    elif isinstance(exc, DATABASE_DOWN):
        logger.warning("database unavailable", extra={"error": str(exc)[:300]})
        exc = DatabaseUnavailable()

    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500 through handler500

    if isinstance(exc, ApiError):
        code, message, details = exc.error_code, str(exc.detail), exc.details
        headers.update(exc.headers)
    elif isinstance(exc, exceptions.ValidationError):
        code, message, details = "invalid_request", _validation_message(exc.detail), exc.detail
    else:
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
        message, details = str(exc.detail), None
        # Authentication errors may carry a more precise code (key_revoked, key_expired, …).
        detail_code = getattr(exc.detail, "code", None)
        if isinstance(exc, (exceptions.AuthenticationFailed, exceptions.PermissionDenied)) and detail_code not in (
            None,
            "authentication_failed",
            "permission_denied",
        ):
            code = detail_code

    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))

    return Response(error_body(code, message, details), status=exc.status_code, headers=headers)


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(404, "not_found", f"No route for {request.path}.")


def handler500(request: HttpRequest) -> JsonResponse:
    # Also reached for errors below DRF (middleware: rate limits and the database cache): a database
    # that is down is still a 503 to retry there.
    if isinstance(sys.exc_info()[1], DATABASE_DOWN):
        response = error_response(503, DatabaseUnavailable.default_code, DatabaseUnavailable.default_detail)
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
    return error_response(500, "internal_error", "Something went wrong on our side; the request id identifies it in our logs.")


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(400, "bad_request", "The request could not be understood.")


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(403, "permission_denied", "You may not do this.")
