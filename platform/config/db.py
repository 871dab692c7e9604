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
# The embedded server's settings where PostgreSQL's defaults (sized for a small shared machine) cost
# the gateway: 128 MB of shared buffers do not hold a 100,000-document HNSW index (~225 MB at 384
# dimensions), so every search and every insert would copy graph pages in from the OS cache. The
# index builds of new dimensions want the graph in maintenance_work_mem; fewer checkpoints mean
# fewer full-page images in the WAL during ingestion. MODELGATE_EMBEDDED_PG_SETTINGS overrides or
# extends these. A DATABASE_URL server is the operator's to tune (README, Operations).
EMBEDDED_SERVER_SETTINGS = {
    "shared_buffers": "1GB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "wal_compression": "pglz",
}
POSTGRES_ENGINES = {"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"}


@dataclass(frozen=True)
class DatabaseChoice:
    settings: dict[str, Any]
    embedded: bool
    started_here: bool


def configure_database(
    *,
    url: str | None,
    pgdata: Path,
    conn_max_age: int,
    connect_timeout: int,
    prepared_statements: bool = True,
    server_settings: dict[str, str] | None = None,
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
        settings, started_here = start_embedded(pgdata, server_settings=server_settings)
        settings.update(CONN_MAX_AGE=conn_max_age, CONN_HEALTH_CHECKS=conn_max_age > 0)
        embedded = True
    options = settings.setdefault("OPTIONS", {})
    options.setdefault("connect_timeout", connect_timeout)
    # Django's own cursors bind parameters on the client and never prepare; this only reaches the
    # statements sent through prepared_cursor() (see there).
    options.setdefault("prepare_threshold", 0 if prepared_statements else None)
    settings.setdefault("TEST", {})
    return DatabaseChoice(settings=settings, embedded=embedded, started_here=started_here)


def start_embedded(pgdata: Path, *, server_settings: dict[str, str] | None = None) -> tuple[dict[str, Any], bool]:
    """Start (or attach to) the embedded server, give it its settings and make sure the app database exists."""
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
    pending = apply_server_settings(str(info.socket_dir), info.port, server_settings or {})
    if pending and not running_before:
        # Started a moment ago by this process: nobody is connected yet, so it can restart now.
        _pg_ctl(pgdata, "restart")
    elif pending:
        logging.getLogger(__name__).warning(
            "The embedded PostgreSQL applies %s at its next start: run `make stop` while nothing uses it.", ", ".join(pending)
        )
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
    _pg_ctl(pgdata, "stop")
    return True


def _pg_ctl(pgdata: Path, action: str) -> None:
    import pgserver

    # pg_ctl restart starts the server again with the options it was started with (postmaster.opts).
    pgserver.pg_ctl(["-w", "-m", "fast", action], pgdata=pgdata, user="pgserver" if _running_as_root() else None)


def embedded_server_settings(overrides: list[str]) -> dict[str, str]:
    """EMBEDDED_SERVER_SETTINGS with MODELGATE_EMBEDDED_PG_SETTINGS (`name=value` items) over them."""
    chosen = dict(EMBEDDED_SERVER_SETTINGS)
    for item in overrides:
        name, equals, value = item.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ImproperlyConfigured(f"MODELGATE_EMBEDDED_PG_SETTINGS items are name=value; got {item!r}.")
        chosen[name.strip().lower()] = value.strip()
    return chosen


def apply_server_settings(host: str, port: int, wanted: dict[str, str]) -> list[str]:
    """Write the settings that postgresql.auto.conf does not hold yet (ALTER SYSTEM) and reload;
    returns those still waiting for a restart (shared_buffers and other postmaster settings)."""
    import psycopg
    from psycopg import sql

    if not wanted:
        return []
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        contexts = dict(conn.execute("SELECT name, context FROM pg_settings WHERE name = ANY(%s)", [list(wanted)]).fetchall())
        unknown = sorted(set(wanted) - set(contexts))
        if unknown:
            raise ImproperlyConfigured(f"MODELGATE_EMBEDDED_PG_SETTINGS: PostgreSQL has no setting {', '.join(unknown)}.")
        written = dict(conn.execute(
            "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' AND error IS NULL"
        ).fetchall())
        changed = [name for name, value in wanted.items() if written.get(name) != value]
        for name in changed:
            try:
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(wanted[name])))
            except psycopg.Error as exc:
                raise ImproperlyConfigured(f"MODELGATE_EMBEDDED_PG_SETTINGS: {name} = {wanted[name]!r}: {exc}") from None
        if changed:
            conn.execute("SELECT pg_reload_conf()")
        waiting = conn.execute("SELECT name FROM pg_settings WHERE pending_restart AND name = ANY(%s)", [list(wanted)]).fetchall()
        return sorted({name for name in changed if contexts[name] == "postmaster"} | {name for (name,) in waiting})


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
