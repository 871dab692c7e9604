"""System checks: pgvector must be available in a recent enough version."""
from collections.abc import Iterator

import pytest
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, connection, connections

from config.checks import _version_tuple, check_pgvector


@pytest.mark.django_db
def test_the_real_database_passes_the_pgvector_check():
    messages = checks.run_checks(databases=["default"], tags=[checks.Tags.database])
    assert [m for m in messages if m.id and m.id.startswith("modelgate.")] == []


def test_versions_compare_numerically():
    assert _version_tuple("0.8.2") >= (0, 8, 0)
    assert _version_tuple("0.10.0") > _version_tuple("0.8.2")
    assert _version_tuple("0.7.4") < (0, 8, 0)


def test_debug_on_is_flagged_in_deploy_checks(settings):
    settings.DEBUG = True
    messages = checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
    assert "modelgate.W001" in {m.id for m in messages}


# -- the errors --------------------------------------------------------------------------------------
# A server without pgvector, or with an old one, cannot be had here: the embedded PostgreSQL ships
# pgvector 0.8, and every database on it (a throwaway one too) sees the same extension files. So the
# check runs against the real server through the real connection, and only its one query is rewritten
# on the way (Django's execute_wrapper, the hook meant for this): PostgreSQL itself then answers "no
# such extension" or an old version, and everything the check does with that answer is real.


def answered_by(sql: str):
    """Send `sql` to the server in place of the check's query of pg_available_extensions."""

    def rewrite(execute, query, params, many, context):
        return execute(sql if "pg_available_extensions" in query else query, params, many, context)

    return connection.execute_wrapper(rewrite)


@pytest.fixture
def sqlite() -> Iterator[str]:
    """A second database alias that is SQLite (in memory): a real connection of another vendor."""
    alias = "not_postgresql"
    connections.settings[alias] = connections.configure_settings(
        {DEFAULT_DB_ALIAS: {}, alias: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    )[alias]
    yield alias
    connections[alias].close()
    del connections[alias]
    del connections.settings[alias]


def test_a_database_that_is_not_postgresql_is_refused(sqlite):
    [error] = check_pgvector(None, databases=[sqlite])

    assert (error.id, error.level) == ("modelgate.E001", checks.ERROR)
    assert error.msg == "Database 'not_postgresql' is sqlite; Modelgate needs PostgreSQL."


@pytest.mark.django_db
def test_a_server_without_the_pgvector_extension_is_refused_with_a_hint():
    with answered_by("SELECT default_version FROM pg_available_extensions WHERE name = 'no_such_extension'"):
        [error] = check_pgvector(None, databases=["default"])

    assert (error.id, error.level) == ("modelgate.E002", checks.ERROR)
    assert error.msg == "The pgvector extension is not available on database 'default'."
    assert "Install pgvector on the server" in error.hint and "DATABASE_URL" in error.hint


@pytest.mark.django_db
def test_a_pgvector_older_than_0_8_is_refused_naming_both_versions():
    with answered_by("SELECT '0.7.4'::text"):
        [error] = check_pgvector(None, databases=["default"])

    assert (error.id, error.level) == ("modelgate.E003", checks.ERROR)
    assert error.msg == "pgvector 0.7.4 is too old; Modelgate needs 0.8.0 or newer."


@pytest.mark.django_db
def test_a_pgvector_with_a_two_digit_minor_version_is_recent_enough():
    with answered_by("SELECT '0.10.0'::text"):
        assert check_pgvector(None, databases=["default"]) == []


def test_without_databases_to_check_nothing_is_queried():
    # `manage.py check` without --database: no database is touched (nor needs to be reachable).
    assert check_pgvector(None, databases=None) == []
