"""Statements on the hot path: fixed INSERTs and UPDATEs sent as prepared statements, and telemetry
rows that need not wait for the disk."""
from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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
