"""The registry admin: status and latency columns, and the load / health actions (background jobs, run here in
this process as django-q2's sync mode does; tests/console/test_model_operations.py covers the jobs' pages)."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django_q.conf import Conf

from registry.models import ModelSpec


@pytest.fixture
def operator(client, db):
    client.force_login(get_user_model().objects.create_superuser("operator", "", "a-long-password-1"))
    return client


@pytest.fixture
def jobs(monkeypatch, django_capture_on_commit_callbacks):
    """Each action's jobs run as its request commits."""
    monkeypatch.setattr(Conf, "SYNC", True)
    return lambda: django_capture_on_commit_callbacks(execute=True)


def test_the_changelist_shows_every_model_with_its_state(operator, starter):
    page = operator.get("/admin/registry/modelspec/").content.decode()
    for slug in starter:
        assert slug in page
    assert "not loaded" in page


def test_the_health_action_runs_a_check_and_reports_it(operator, starter, jobs):
    lid = starter["lid-176"]
    with jobs():
        response = operator.post(
            "/admin/registry/modelspec/", {"action": "check_health", "_selected_action": [lid.pk]}, follow=True
        )
    assert "lid-176: <a href=" in response.content.decode().lower()
    assert lid.operations.get().result["detail"].startswith("answered in")
    lid.refresh_from_db()
    assert lid.last_check_ok is True
    page = operator.get("/admin/registry/modelspec/").content.decode()
    assert "loaded" in page


def test_load_then_unload_actions_change_this_processes_pool(operator, starter, isolated_pool, jobs):
    lid = starter["lid-176"]
    with jobs():
        operator.post("/admin/registry/modelspec/", {"action": "load_models", "_selected_action": [lid.pk]})
    assert isolated_pool.is_loaded("lid-176")
    with jobs():
        operator.post("/admin/registry/modelspec/", {"action": "unload_models", "_selected_action": [lid.pk]})
    assert not isolated_pool.is_loaded("lid-176")


def test_the_change_page_validates_options(operator, starter):
    lid = starter["lid-176"]
    page = operator.get(f"/admin/registry/modelspec/{lid.pk}/change/")
    assert page.status_code == 200
    data = {
        "slug": "lid-176", "display_name": "x", "task": "language_id", "backend": "fasttext", "tier": "local",
        "enabled": "on", "source_kind": "package", "source": lid.source, "revision": "", "prepare": "", "local_path": "",
        "options": '{"beam_size": 4}', "dependencies": "{}", "max_batch_size": "64", "max_wait_ms": "2",
        **{f: "0" for f in ["price_input_per_1k_tokens", "price_output_per_1k_tokens", "price_per_1k_characters",
                             "price_per_audio_minute", "price_per_compute_second"]},
    }
    response = operator.post(f"/admin/registry/modelspec/{lid.pk}/change/", data)
    assert response.status_code == 200
    assert "Unknown option &#x27;beam_size&#x27; for fasttext" in response.content.decode()
    assert ModelSpec.objects.get(pk=lid.pk).options == {}
