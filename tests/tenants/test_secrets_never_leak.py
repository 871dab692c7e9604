"""No API key secret and no provider key reaches a log line or a table row, even with every logger at
DEBUG: requests that succeed, a wrong key, a premium call the provider refuses while echoing the key it
was given (some OpenAI-compatible servers do), and a streamed one."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from pythonjsonlogger.json import JsonFormatter

from routing.models import ProviderCredential
from tests.routing.conftest import post
from tests.routing.fake_providers import fake_providers  # noqa: F401  (fixture)
from tests.routing.test_chat_completions import FRANCE
from tests.routing.test_premium_routing import OPERATOR_KEY, premium

TENANT_PROVIDER_KEY = "sk-alice-own-provider-key-1234567890"


class _Lines(logging.Handler):
    """Every record rendered as the JSON line a deployment writes, with all its extra fields."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.exc_info:
            text += self.formatter.formatException(record.exc_info)  # type: ignore[union-attr]
        self.lines.append(text)


@contextmanager
def every_log_line() -> Iterator[_Lines]:
    """Collect what every logger writes at DEBUG, including those that do not propagate to the root."""
    handler = _Lines()
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        if logger is loggers[0] or not logger.propagate:
            logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled
            logger.removeHandler(handler)


def every_row() -> Iterator[tuple[str, str]]:
    """(table, the row as text) for every row of every table of the database."""
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT t::text FROM "{table}" t')
            for (row,) in cursor.fetchall():
                yield table, row


@pytest.mark.django_db(transaction=True)
def test_no_key_secret_or_provider_key_reaches_a_log_line_or_a_table_row(api, alice, bob, fake_providers):
    spec = premium("gpt-fake", "generation", fake_providers)
    own = ProviderCredential(tenant=alice.tenant, kind="openai", base_url=spec.options["base_url"])
    own.set_api_key(TENANT_PROVIDER_KEY)
    own.save()
    chat = {"messages": FRANCE, "model": "gpt-fake", "max_tokens": 8}
    wrong = alice.secret[:-1] + ("x" if alice.secret[-1] != "x" else "y")

    with every_log_line() as logs:
        assert post(api, "/v1/chat/completions", chat, alice).status_code == 200
        assert post(api, "/v1/chat/completions", chat, bob).status_code == 200  # the operator's provider key
        streamed = post(api, "/v1/chat/completions", {**chat, "stream": True}, alice)
        assert b"[DONE]" in b"".join(streamed.streaming_content)
        refused = api.post("/v1/chat/completions", json.dumps(chat), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {wrong}")
        assert refused.status_code == 401
        fake_providers.status(401, times=10)  # "Incorrect API key provided: <the key>."
        failed = post(api, "/v1/chat/completions", chat, alice)
        assert failed.status_code == 502, failed.content

    assert fake_providers.requests_to("/v1/chat/completions"), "the provider was called"
    assert len(logs.lines) > 10, "the logs were captured"  # an access line per request at the least
    secrets = {"alice's key": alice.secret, "bob's key": bob.secret, "a wrong key": wrong,
               "the tenant's provider key": TENANT_PROVIDER_KEY, "the operator's provider key": OPERATOR_KEY}
    rows = list(every_row())
    for name, secret in secrets.items():
        assert not [line for line in logs.lines if secret in line], f"{name} was logged"
        assert secret not in failed.content.decode(), f"{name} was answered"
        leaked = {table for table, row in rows if secret in row}
        assert not leaked, f"{name} is stored in clear in {sorted(leaked)}"
    # The rows were read: the key's prefix is there.
    assert any(alice.key.prefix in row for table, row in rows if table == "tenants_apikey")
