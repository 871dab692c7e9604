"""Rate-limit headers on every limited response (`x-ratelimit-*`, as OpenAI sends them)."""
from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class RateLimitHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        verdict = getattr(request, "rate_limit", None)
        if verdict is not None:
            response["x-ratelimit-limit-requests"] = str(verdict.limit)
            response["x-ratelimit-remaining-requests"] = str(verdict.remaining)
            response["x-ratelimit-reset-requests"] = f"{verdict.reset_seconds:.0f}s"
        return response
