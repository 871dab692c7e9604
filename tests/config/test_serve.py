"""`manage.py serve` (what `make run` runs), end to end: a real model server, gunicorn and task cluster on loopback."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from tenants.models import Tenant

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def url_of_the_test_database() -> str:
    db = settings.DATABASES["default"]
    host = db["HOST"].replace("/", "%2F")
    return f"postgresql://{db['USER']}@{host}:{db['PORT']}/{db['NAME']}"


class Served:
    def __init__(self, port: int, data_dir: Path, *, workers: int = 1):
        env = {
            **os.environ,
            "DATABASE_URL": url_of_the_test_database(),
            "MODELGATE_DATA_DIR": str(data_dir),
            "MODELGATE_Q_WORKERS": "1",
            # Converting the starter chat model takes a minute of CPU; these tests are about serving.
            "MODELGATE_PREPARE_MODELS_ON_START": "0",
        }
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "serve", "--bind", f"127.0.0.1:{port}", "--threads", "2",
             "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert self.proc.poll() is None, "serve exited early:\n" + "".join(self.lines)
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not printed in {timeout}s:\n" + "".join(self.lines))

    def post(self, path: str, key: str, body: dict) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get(self, path: str, key: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.mark.django_db(transaction=True)
def test_serve_starts_everything_prints_a_working_key_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    served = Served(port, tmp_path)
    try:
        served.wait_for(r"Modelgate is ready")
        key = served.wait_for(r"key:\s+(mg_\S+)")[1]
        served.wait_for(r"password: \S+")
        served.wait_for(r"Q Cluster .* running")

        assert served.get("/ready")[0] == 200
        status, body = served.get("/v1/me", key)
        assert status == 200 and b'"slug":"demo"' in body
        status, body = served.get("/v1/me", key[:-4] + "AAAA")
        assert status == 401 and b'"code":"invalid_api_key"' in body
        assert served.get("/admin/login/")[0] == 200
    finally:
        served.proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C delivers
        assert served.proc.wait(timeout=60) == 0, "".join(served.lines)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not re.search(r"Stopped the embedded PostgreSQL", "".join(served.lines)), "an external database is left alone"


@pytest.mark.django_db(transaction=True)
def test_a_second_start_reuses_the_data(tmp_path):
    port = free_port()
    for _ in range(2):
        served = Served(port, tmp_path)
        try:
            served.wait_for(r"Modelgate is ready")
            served.wait_for(r"Demo tenant")
        finally:
            served.proc.send_signal(signal.SIGTERM)
            assert served.proc.wait(timeout=60) == 0
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
    assert "Demo tenant 'demo' exists" in "".join(served.lines)


@pytest.mark.django_db(transaction=True)
def test_the_model_server_serves_every_web_worker_and_a_killed_one_is_restarted(tmp_path):
    port = free_port()
    served = Served(port, tmp_path, workers=2)
    try:
        pid = int(served.wait_for(r"Model server listening on unix://\S+ \(pid (\d+)\)")[1])
        served.wait_for(r"Modelgate is ready")
        key = served.wait_for(r"key:\s+(mg_\S+)")[1]
        assert (tmp_path / "modelserver.sock").stat().st_mode & 0o777 == 0o600
        status, body = served.post("/v1/detect-language", key, {"texts": ["Bonjour tout le monde, comment allez-vous ?"]})
        assert status == 200 and b'"language":"fr"' in body, body

        os.kill(pid, signal.SIGKILL)  # as a crashing model or the OOM killer would
        deadline, answers = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            status, body = served.post("/v1/detect-language", key, {"texts": ["Guten Morgen, wie geht es Ihnen heute?"]})
            answers.append(status)
            if status == 200:
                break
            assert status == 503 and b'"code":"no_model_available"' in body, body  # never a hang, never a 500
            time.sleep(0.5)
        assert answers[-1] == 200, answers
        restarted = served.wait_for(r"Model server listening on unix://\S+ \(pid (?!%d\))(\d+)\)" % pid)
        assert int(restarted[1]) != pid
        assert "The model server exited" in "".join(served.lines)
    finally:
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=60) == 0, "".join(served.lines)
    assert not (tmp_path / "modelserver.sock").exists()
