"""Fault fixtures: the routing fixtures (models, fake providers), a fake provider that streams slowly,
and a budget whose holds and charges the tests read back."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from billing.models import Budget
from tests.routing.conftest import chat_dir, chat_model, nllb_dir, translator  # noqa: F401  (fixtures)
from tests.routing.fake_providers import FakeProviderServer, _Handler, _QuietServer, fake_providers  # noqa: F401


class TricklingProviderServer(FakeProviderServer):
    """The fake provider, its streams sending one event every `gap` seconds: a long answer, as a real
    model writes it. `streams_open` counts the streams still being written (the upstream's view of
    whether we closed it)."""

    def __init__(self, gap: float) -> None:
        super().__init__()
        self.gap = gap
        self.streams_open = 0
        self.streams_ended = threading.Event()

    def start(self) -> TricklingProviderServer:
        fake = self

        class Handler(_TricklingHandler):
            server_state = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self


class _TricklingHandler(_Handler):
    server_state: TricklingProviderServer

    def _sse(self, events: list[bytes]) -> None:
        fake = self.server_state
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with fake._lock:
            fake.streams_open += 1
        try:
            for event in events:
                self.wfile.write(event)
                self.wfile.flush()
                if fake.released.wait(fake.gap):
                    return
        except OSError:
            pass  # the client closed the stream: what a deadline or a disconnect does
        finally:
            with fake._lock:
                fake.streams_open -= 1
            fake.streams_ended.set()


@pytest.fixture
def trickling() -> Iterator[TricklingProviderServer]:
    """A fake provider whose streams send an event every 0.2 s."""
    with TricklingProviderServer(gap=0.2) as server:
        yield server


@pytest.fixture
def budget(tenant_a) -> Budget:
    return Budget.objects.create(tenant=tenant_a, limit=Decimal("100"))


def words_reply(count: int) -> str:
    return " ".join(f"word{i}" for i in range(count))


def wait_until(check, seconds: float = 30.0) -> bool:
    """Poll `check` until it holds or `seconds` pass (a bounded wait for another process or thread)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
