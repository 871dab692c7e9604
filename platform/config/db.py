"""The database: DATABASE_URL when set, otherwise an embedded PostgreSQL with pgvector in .pgdata/."""
from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def prepared_cursor() -> Iterator[Any]:
    """A cursor for the hot path's fixed statements: parameters bound by the server and each
    statement prepared once per connection, so PostgreSQL plans it once instead of per request
    (a statement of several CTEs takes longer to plan than to run). Statements are logged and
    counted like any Django query. MODELGATE_DB_PREPARED_STATEMENTS=false (for a pooler that cannot
    keep prepared statements) keeps the server-side binding and plans every time."""
    from django.db import connection
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        raw = ServerBindingCursor(connection.connection)
    cursor = _logged_prepared_class()(raw, connection) if connection.queries_logged else connection.make_cursor(raw)
    try:
        yield cursor
    finally:
        cursor.close()


def insert_statement(row: Any) -> tuple[str, list[object]]:
    """The INSERT Django would send for `row` (its primary key must already be set)."""
    from django.db import connection
    from django.db.models.sql import InsertQuery

    fields = [field for field in row._meta.local_concrete_fields if not field.generated]
    query = InsertQuery(type(row))
    query.insert_values(fields, [row])
    ((statement, params),) = query.get_compiler(connection=connection).as_sql()
    return statement, list(params)


def update_statement(queryset: Any, values: dict[str, object]) -> tuple[str, list[object]]:
    """The UPDATE Django would send for `queryset.update(**values)`."""
    from django.db import connections
    from django.db.models.sql import UpdateQuery

    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(values)
    statement, params = query.get_compiler(connection=connections[queryset.db]).as_sql()
    return statement, list(params)


def insert_row(row: Any) -> None:
    """`row.save(force_insert=True)` as a prepared statement (no signals: for hot-path rows)."""
    from django.db import connection

    statement, params = insert_statement(row)
    with prepared_cursor() as cursor:
        cursor.execute(statement, params)
    row._state.adding, row._state.db = False, connection.alias


def insert_row_unflushed(row: Any) -> None:
    """Insert a telemetry row (a search record) without waiting for the disk at commit: a crash of
    PostgreSQL may lose the last fraction of a second of such rows, never anything else. The setting
    and the INSERT go as one message, which autocommit runs as one transaction, so the setting
    covers exactly this row; inside a caller's transaction the row is written normally."""
    from django.db import connection

    if not connection.get_autocommit() or connection.in_atomic_block:
        insert_row(row)
        return
    statement, params = insert_statement(row)
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('synchronous_commit', 'off', true);\n" + statement, params)
    row._state.adding, row._state.db = False, connection.alias


def update_rows(queryset: Any, values: dict[str, object]) -> int:
    """`queryset.update(**values)` as a prepared statement."""
    statement, params = update_statement(queryset, values)
    with prepared_cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


@functools.cache
def _logged_prepared_class() -> type:
    # Built on first use: the backend module cannot be imported while settings load.
    from django.db.backends.postgresql.base import CursorDebugWrapper

    class LoggedPrepared(CursorDebugWrapper):
        """Logs the statement with its values in place: a prepared statement's text has only $n."""

        @contextmanager
        def debug_sql(self, sql=None, params=None, use_last_executed_query=False, many=False):
            try:
                shown = self.db.ops.compose_sql(sql, params) if params and not many else sql
            except Exception:
                shown = sql
            with super().debug_sql(shown, params, use_last_executed_query=False, many=many):
                yield

    return LoggedPrepared
