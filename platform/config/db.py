"""The database: DATABASE_URL when set, otherwise an embedded PostgreSQL with pgvector in .pgdata/."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

EMBEDDED_DATABASE_NAME = "modelgate"
POSTGRES_ENGINES = {"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"}


@dataclass(frozen=True)
class DatabaseChoice:
    settings: dict[str, Any]
    embedded: bool
    started_here: bool


def configure_database(
    *, url: str | None, pgdata: Path, conn_max_age: int, connect_timeout: int
) -> DatabaseChoice:
    if url:
        settings = dj_database_url.parse(
            url, conn_max_age=conn_max_age, conn_health_checks=conn_max_age > 0
        )
        if settings.get("ENGINE") not in POSTGRES_ENGINES:
            raise ImproperlyConfigured(
                "DATABASE_URL must point at PostgreSQL with the pgvector extension "
                f"(got engine {settings.get('ENGINE')!r})."
            )
        embedded, started_here = False, False
    else:
        settings, started_here = start_embedded(pgdata)
        settings.update(CONN_MAX_AGE=conn_max_age, CONN_HEALTH_CHECKS=conn_max_age > 0)
        embedded = True
    settings.setdefault("OPTIONS", {}).setdefault("connect_timeout", connect_timeout)
    settings.setdefault("TEST", {})
    return DatabaseChoice(settings=settings, embedded=embedded, started_here=started_here)


def start_embedded(pgdata: Path) -> tuple[dict[str, Any], bool]:
    """Start (or attach to) the embedded server and make sure the app database exists."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to /tmp, which is fine here.
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver.utils import PostmasterInfo

    # pgserver narrates every step at INFO; only its problems belong in our logs.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    running_before = _is_running(pgdata, PostmasterInfo)
    # cleanup_mode=None: the server outlives this process; `make stop` / the supervisor stop it.
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        raise ImproperlyConfigured(f"The embedded PostgreSQL in {pgdata} has no Unix socket.")
    _ensure_database(str(info.socket_dir), info.port, EMBEDDED_DATABASE_NAME)
    settings = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": EMBEDDED_DATABASE_NAME,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": str(info.socket_dir),
        "PORT": str(info.port),
    }
    return settings, not running_before


def stop_embedded(pgdata: Path) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    import pgserver
    from pgserver.utils import PostmasterInfo

    if not _is_running(pgdata, PostmasterInfo):
        return False
    user = "pgserver" if _running_as_root() else None
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def _is_running(pgdata: Path, postmaster_info: Any) -> bool:
    if not (pgdata / "PG_VERSION").exists():
        return False
    info = postmaster_info.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def _running_as_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_database(host: str, port: int, name: str) -> None:
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (errors.DuplicateDatabase, errors.UniqueViolation):
            pass  # another process created it between our check and our CREATE
