"""Real gunicorn processes on loopback serving the pytest test database, for what must hold across
processes: like two replicas of Modelgate, these servers share nothing but PostgreSQL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings

from tests.config.test_serve import ROOT, free_port, url_of_the_test_database

T = TypeVar("T")

READY_TIMEOUT_SECONDS = 90
STOP_TIMEOUT_SECONDS = 20
REQUEST_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or the raw bytes when the body is not JSON

    @property
    def error_code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


class Server:
    """One gunicorn (one worker, `threads` threads) started as `manage.py serve` starts it."""

    def __init__(self, *, data_dir: Path, threads: int):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"gunicorn-{self.port}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "platform"), os.environ.get("PYTHONPATH")])),
            "DATABASE_URL": url_of_the_test_database(),
            # The test process's key: provider credentials it encrypted must decrypt in the servers.
            "SECRET_KEY": settings.SECRET_KEY,
            "MODELGATE_DATA_DIR": str(data_dir),
            "MODELGATE_LOG_LEVEL": "WARNING",
            "MODELGATE_PREPARE_MODELS_ON_START": "0",
            # Each test flushes the database and creates its model specs anew: a server must not keep
            # serving the previous test's rows from its routing cache.
            "MODELGATE_ROUTING_CACHE_SECONDS": "0",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "config.wsgi:application",
                    "--config", str(ROOT / "platform" / "config" / "gunicorn_conf.py"),
                    "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", str(threads),
                ],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn on port {self.port} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.request("GET", "/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.25)
        raise AssertionError(f"gunicorn on port {self.port} was not ready in {READY_TIMEOUT_SECONDS}s:\n{self.log()}")

    def request(self, method: str, path: str, *, key: str | None = None, body: dict[str, Any] | None = None,
                request_id: str | None = None, timeout: float = REQUEST_TIMEOUT_SECONDS) -> Reply:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if request_id:
            headers["x-request-id"] = request_id
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return _reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return _reply(error.code, error.headers, error.read())

    def terminate(self) -> None:
        """SIGTERM to the server's process group: the arbiter and its worker stop gracefully."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)

    def reap(self) -> None:
        """Wait for the server to leave, SIGKILL it if it has not in time; always reaped. The arbiter
        is not reaped before the SIGKILL, so the group id is still ours."""
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)


def _reply(status: int, headers: Any, raw: bytes) -> Reply:
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw
    return Reply(status=status, headers={name.lower(): value for name, value in headers.items()}, body=body)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


@contextmanager
def running_servers(count: int, *, data_dir: Path, threads: int) -> Iterator[list[Server]]:
    """`count` servers started side by side, ready on return, stopped and reaped on exit."""
    servers: list[Server] = []
    try:
        for _ in range(count):
            servers.append(Server(data_dir=data_dir, threads=threads))
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for server in servers:
            server.wait_ready(deadline)
        yield servers
    finally:
        for server in servers:  # all at once: each takes a second or two to stop gracefully
            server.terminate()
        for server in servers:
            server.reap()


def all_at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run every call in its own thread, released together by a barrier; results in call order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as executor:
        return list(executor.map(run, calls))
