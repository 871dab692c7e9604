"""The embedded PostgreSQL's own settings: applied at its first start, overridable, reported when a
running server needs a restart for them."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from config.db import EMBEDDED_SERVER_SETTINGS, apply_server_settings, embedded_server_settings, start_embedded, stop_embedded


def test_overrides_replace_or_extend_the_defaults():
    chosen = embedded_server_settings(["shared_buffers=256MB", " Work_Mem = 16MB "])
    assert chosen["shared_buffers"] == "256MB"
    assert chosen["work_mem"] == "16MB"
    assert chosen["max_wal_size"] == EMBEDDED_SERVER_SETTINGS["max_wal_size"]
    assert embedded_server_settings([]) == EMBEDDED_SERVER_SETTINGS


@pytest.mark.parametrize("item", ["shared_buffers", "=1GB", "shared_buffers="])
def test_an_item_without_name_and_value_is_refused(item):
    with pytest.raises(ImproperlyConfigured, match="name=value"):
        embedded_server_settings([item])


@pytest.fixture
def pgdata() -> Iterator[Path]:
    # The server runs as an unprivileged user when tests run as root: it must reach the directory.
    root = Path(tempfile.mkdtemp(prefix="modelgate-pg-"))
    os.chmod(root, 0o755)
    try:
        yield root / "data"
    finally:
        stop_embedded(root / "data")
        shutil.rmtree(root, ignore_errors=True)


def show(database: dict, name: str) -> str:
    with psycopg.connect(host=database["HOST"], port=database["PORT"], user="postgres", dbname="postgres") as conn:
        return conn.execute(f"SHOW {name}").fetchone()[0]


def test_a_new_server_starts_with_its_settings_and_a_running_one_reports_what_waits_for_a_restart(pgdata, caplog):
    wanted = dict(EMBEDDED_SERVER_SETTINGS, shared_buffers="192MB", work_mem="12MB")
    database, started = start_embedded(pgdata, server_settings=wanted)
    assert started
    # shared_buffers only takes effect at a start: the new server was restarted before anyone used it.
    assert show(database, "shared_buffers") == "192MB"
    assert show(database, "work_mem") == "12MB"
    assert show(database, "checkpoint_timeout") == EMBEDDED_SERVER_SETTINGS["checkpoint_timeout"]
    # Every later start with the same settings finds them written: nothing to alter, reload or restart.
    auto_conf = (pgdata / "postgresql.auto.conf").read_text()
    assert apply_server_settings(database["HOST"], int(database["PORT"]), wanted) == []
    assert (pgdata / "postgresql.auto.conf").read_text() == auto_conf

    # Attached to while running: a reloadable setting applies at once, a postmaster one waits (and says so).
    with caplog.at_level(logging.WARNING, logger="config.db"):
        database, started = start_embedded(pgdata, server_settings=dict(wanted, shared_buffers="160MB", work_mem="20MB"))
    assert not started
    assert show(database, "work_mem") == "20MB"
    assert show(database, "shared_buffers") == "192MB"
    assert "applies shared_buffers at its next start" in caplog.text

    assert "shared_buffers = '160MB'" in (pgdata / "postgresql.auto.conf").read_text()  # for its next start

    with pytest.raises(ImproperlyConfigured, match="no setting shared_bufers"):
        start_embedded(pgdata, server_settings={"shared_bufers": "1GB"})
    with pytest.raises(ImproperlyConfigured, match="work_mem = 'lots'"):
        start_embedded(pgdata, server_settings={"work_mem": "lots"})


@pytest.mark.skipif(not settings.DATABASE_CHOICE.embedded, reason="a DATABASE_URL server is the operator's to tune")
@pytest.mark.django_db
def test_the_embedded_server_under_the_tests_runs_with_the_configured_settings():
    configured = settings.EMBEDDED_PG_SETTINGS
    with connection.cursor() as cursor:
        for name in ("shared_buffers", "max_wal_size", "maintenance_work_mem"):
            cursor.execute(f"SHOW {name}")
            assert cursor.fetchone()[0] == configured[name], f"{name}: restart the embedded server (make stop) after changing it"
