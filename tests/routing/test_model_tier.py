"""The web tier holds no models: local inference goes to the model server (a process of its own),
whose pool every web worker shares."""
from __future__ import annotations

import os

from inference.client import Fleet
from registry.services import get_pool
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
