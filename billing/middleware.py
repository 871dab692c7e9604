"""Rate-limit headers on every limited response (`x-ratelimit-*`, as OpenAI sends them)."""
from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from billing.ratelimits import Verdict, token_verdict


def _set(response: HttpResponse, kind: str, verdict: Verdict) -> None:
    response[f"x-ratelimit-limit-{kind}"] = str(verdict.limit)
    response[f"x-ratelimit-remaining-{kind}"] = str(verdict.remaining)
    response[f"x-ratelimit-reset-{kind}"] = f"{verdict.reset_seconds:.0f}s"


class RateLimitHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        reset = token_verdict.set(None)  # worker threads serve many requests: start clean
        try:
            response = self.get_response(request)
            verdict = getattr(request, "rate_limit", None)
            if verdict is not None:
                _set(response, "requests", verdict)
            tokens = token_verdict.get()
            if tokens is not None:
                _set(response, "tokens", tokens)
            return response
        finally:
            token_verdict.reset(reset)
