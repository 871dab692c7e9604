"""The answers gunicorn gives itself, in the one error shape.

A request gunicorn cannot parse (a request line over its 8,190-byte maximum, too many or too large
headers, a malformed request line, a bad chunk) never reaches Django, and gunicorn answers it with a
small HTML page. A client of the API should get the same JSON error as from any other refusal, so
`gunicorn_conf` puts `write_error` below in place of gunicorn's page writer in the master, before the
workers fork. gunicorn keeps choosing the status and logging the refusal; only the page changes.
"""
from __future__ import annotations

import json
import socket
import uuid

from gunicorn import util

# gunicorn's statuses for requests it refuses, in the API's vocabulary (core.errors).
CODES = {
    400: "invalid_request",
    403: "permission_denied",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}
MESSAGES = {
    414: "The request line is longer than the server reads (8,190 bytes); send long input in the body.",
    431: "The request's headers are too many or too large.",
    500: "Internal server error.",
}


def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Write a complete HTTP response (the connection is closed after it) with the error as JSON."""
    request_id = uuid.uuid4().hex
    message = MESSAGES.get(status_int) or mesg or reason
    body = json.dumps({
        "error": {"code": CODES.get(status_int, "invalid_request"), "message": message, "request_id": request_id}
    }).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        "\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


def install() -> None:
    """Make gunicorn's workers answer with `write_error` (they call it as `gunicorn.util.write_error`)."""
    util.write_error = write_error
