"""System checks for the invariants Modelgate cannot run without."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections

MIN_PGVECTOR = (0, 8, 0)  # hnsw.iterative_scan, needed for filtered searches that still return k rows


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


@register(Tags.database)
def check_pgvector(app_configs: Any, databases: list[str] | None = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor != "postgresql":
            errors.append(Error(f"Database {alias!r} is {connection.vendor}; Modelgate needs PostgreSQL.", id="modelgate.E001"))
            continue
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            )
            row = cursor.fetchone()
        if row is None:
            errors.append(
                Error(
                    f"The pgvector extension is not available on database {alias!r}.",
                    hint="Install pgvector on the server, or leave DATABASE_URL unset to use the embedded PostgreSQL.",
                    id="modelgate.E002",
                )
            )
        elif _version_tuple(row[0]) < MIN_PGVECTOR:
            errors.append(
                Error(
                    f"pgvector {row[0]} is too old; Modelgate needs {'.'.join(map(str, MIN_PGVECTOR))} or newer.",
                    id="modelgate.E003",
                )
            )
    return errors


@register(Tags.security, deploy=True)
def check_debug(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    if settings.DEBUG:
        return [Warning("DEBUG is on: error pages reveal settings and code.", id="modelgate.W001")]
    return []
