"""Request-wide middleware: request ids, the URL and body size limits, and one access-log line per request."""
from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from core.errors import error_response
from core.logs import current_request_id

REQUEST_ID_HEADER = "x-request-id"
# Accept a caller's id only when it is safe to echo into headers and logs.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")

access_log = logging.getLogger("modelgate.access")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = supplied if _VALID_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        request.request_id = request_id
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = request_id
            if access_log.isEnabledFor(logging.INFO):  # at WARNING, not even the fields are gathered
                key = getattr(request, "auth", None)
                access_log.info(
                    "request",
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": response.status_code,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "tenant": getattr(getattr(key, "tenant", None), "slug", None),
                        "key_prefix": getattr(key, "prefix", None),
                    },
                )
            return response
        finally:
            current_request_id.reset(token)


class UrlLimitMiddleware:
    """Refuse a URL no route can take before anything looks it up: longer than MODELGATE_MAX_URL_BYTES (414),
    or holding a NUL character (400), which no name, id or parameter can hold and PostgreSQL cannot compare."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.MODELGATE_MAX_URL_BYTES
        # As the client sent it when the server says so (gunicorn's RAW_URI), else as Django spells it.
        length = len(request.META.get("RAW_URI") or request.get_full_path())
        if length > limit:
            return error_response(414, "uri_too_long", f"The URL is {length} bytes; the limit is {limit} bytes.")
        if "\x00" in request.path:
            return error_response(400, "invalid_request", "The URL path holds a NUL character (%00), which no name or id can hold.")
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                shown = name.replace("\x00", "%00")[:64]
                return error_response(400, "invalid_request", f"{shown}: The query parameter holds a NUL character (%00).")
        return self.get_response(request)


class RequestSizeLimitMiddleware:
    """Refuse oversized bodies before anything reads them, with a 413 in the error shape."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.MODELGATE_MAX_REQUEST_BYTES
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            return error_response(400, "invalid_request", "Content-Length is not a number.")
        if length > limit:
            return error_response(
                413,
                "request_too_large",
                f"The request body is {length} bytes; the limit is {limit} bytes.",
            )
        return self.get_response(request)
