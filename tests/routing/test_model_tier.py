"""The web tier holds no models: local inference goes to the model server (a process of its own),
whose pool every web worker shares."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.core.exceptions import ValidationError

from inference.client import Fleet
from registry import services as registry_services
from registry.models import ModelSpec
from registry.services import get_pool, model_server_answers
from tests.conftest import ROOT
from tests.routing.conftest import post, records


def test_local_answers_come_from_the_model_server_not_this_process(api, alice, starter, model_server):
    response = post(api, "/v1/detect-language", {"texts": ["Bonjour tout le monde"]}, alice, HTTP_X_REQUEST_ID="tier-00001")
    assert response.status_code == 200 and response.json()["results"][0]["language"] == "fr"
    pool = get_pool()
    assert isinstance(pool, Fleet)
    [state] = pool.servers_state().values()
    assert state["pid"] == model_server.pid != os.getpid() and "lid-176" in state["loaded"]
    [record] = records("tier-00001")
    assert record.status == "ok" and record.queue_ms is not None and record.compute_ms > 0


def start_model_server(address: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "modelserver", "--address", address],
                               cwd=ROOT, env={**os.environ, "MODELGATE_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + 90
    while not model_server_answers(address):
        assert process.poll() is None and time.monotonic() < deadline, "the second model server did not start"
        time.sleep(0.2)
    return process


@pytest.fixture
def two_servers(model_server, tmp_path, settings, monkeypatch):
    """The session's model server and a second one: the fleet a web node with two model hosts sees."""
    first = registry_services.get_pool().candidates("lid-176")[0]
    second = f"unix://{tmp_path / 'second.sock'}"
    process = start_model_server(second)
    settings.MODELGATE_MODEL_SERVERS = [first, second]
    monkeypatch.setattr(registry_services, "_pool", registry_services.fleet([first, second]))
    yield first, second, process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def place(slug: str, *servers: str) -> None:
    spec = ModelSpec.objects.get(slug=slug)
    spec.model_servers = list(servers)
    spec.full_clean()
    spec.save()


def test_a_model_goes_to_the_server_it_is_placed_on(api, alice, starter, two_servers):
    first, second, _ = two_servers
    place("lid-176", second)
    response = post(api, "/v1/detect-language", {"texts": ["Guten Morgen zusammen"]}, alice)
    assert response.status_code == 200 and response.json()["results"][0]["language"] == "de"
    state = get_pool().servers_state()
    assert "lid-176" in state[second]["loaded"]
    assert get_pool().stats("lid-176")["items"] >= 1


def test_a_dead_server_fails_over_to_the_next_one_placed_and_then_answers_503_never_hangs(api, alice, starter, two_servers):
    first, second, process = two_servers
    place("lid-176", second, first)
    assert post(api, "/v1/detect-language", {"texts": ["Buongiorno a tutti"]}, alice).status_code == 200
    process.kill()  # SIGKILL, as a crashing model or the OOM killer would
    process.wait(timeout=10)
    started = time.monotonic()
    response = post(api, "/v1/detect-language", {"texts": ["Buongiorno a tutti"]}, alice, HTTP_X_REQUEST_ID="failover-1")
    assert response.status_code == 200 and time.monotonic() - started < 10
    assert "lid-176" in get_pool().servers_state()[first]["loaded"]

    place("lid-176", second)  # only the dead server may serve it now
    started = time.monotonic()
    response = post(api, "/v1/detect-language", {"texts": ["Buongiorno a tutti"]}, alice, HTTP_X_REQUEST_ID="no-server-1")
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_model_available"
    assert time.monotonic() - started < 10
    [record] = records("no-server-1")
    assert record.status == "error" and record.error_code == "model_server_unavailable"


def test_a_placement_must_name_configured_servers(starter, two_servers, settings):
    spec = ModelSpec.objects.get(slug="lid-176")
    spec.model_servers = ["tcp://10.9.9.9:7000"]
    with pytest.raises(ValidationError, match="Not in MODELGATE_MODEL_SERVERS"):
        spec.full_clean()
