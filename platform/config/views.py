"""Pages that need no key: /health says the process is alive, /ready that it can serve, / points at the rest,
and /playground is where a tenant tries the API with their own key (held by the browser, never here)."""
from __future__ import annotations

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

_migrations_applied = False  # once true it stays true for this process's code


@require_GET
def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"name": "Modelgate", "api": "/v1/", "docs": "/api/docs/", "schema": "/api/schema/", "admin": "/admin/",
                         "playground": "/playground"})


# The playground holds a tenant's API key in the browser: only our own scripts may run on it, it may talk
# to this origin only, and no other site may frame it. Recorded audio is previewed from blob: URLs.
PLAYGROUND_CSP = "; ".join([
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "media-src 'self' blob:",
    "connect-src 'self'", "form-action 'none'", "base-uri 'none'", "frame-ancestors 'none'",
])


@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    """A page for a tenant to try every task with their key. The key never reaches this view: the page's
    script keeps it in the browser and sends it only with its own API calls, so the page needs no login."""
    response = render(request, "playground.html", {"audio_max_seconds": settings.MODELGATE_AUDIO_MAX_SECONDS})
    response["Content-Security-Policy"] = PLAYGROUND_CSP
    response["Permissions-Policy"] = "microphone=(self), camera=(), geolocation=()"
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "migrations": _check_migrations()}
    if checks["database"] == "ok":
        checks["pgvector"] = _check_pgvector()
    else:
        checks["pgvector"] = "unknown"
    is_ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ready" if is_ready else "not_ready", "checks": checks}, status=200 if is_ready else 503)


def _check_database() -> str:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except DatabaseError as exc:
        return f"unreachable: {exc.__class__.__name__}"


def _check_pgvector() -> str:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return "ok" if row else "extension vector is not installed in this database"


def _check_migrations() -> str:
    global _migrations_applied
    if _migrations_applied:
        return "ok"
    try:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        return f"unknown: {exc.__class__.__name__}"
    if pending:
        return f"{len(pending)} migrations not applied"
    _migrations_applied = True
    return "ok"
