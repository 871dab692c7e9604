"""GET /metrics: access (token, networks, disabled), the named series and their labels, and counts that
hold across a real gunicorn's two workers in prometheus_client's multiprocess mode."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import psutil
import pytest
from django.conf import settings
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from billing.models import Budget
from inference.breaker import breaker_for
from registry import services as registry_services
from routing import tuning
from routing.models import InferenceRecord, RoutingPolicy
from tests.config.test_serve import ROOT, Served, free_port, url_of_the_test_database
from tests.routing.conftest import post

TOKEN = "metrics-token-0123456789abcdef"
DETECT = {"texts": ["Bonjour tout le monde, comment allez-vous ?"]}
LID = {"task": "language_id", "model": "lid-176", "tier": "local", "status": "ok", "purpose": "answer"}


@pytest.fixture
def token(settings):
    settings.MODELGATE_METRICS_TOKEN = TOKEN
    settings.MODELGATE_METRICS_ALLOW = []
    return TOKEN


def scrape(api, token: str = TOKEN, **extra) -> dict[str, dict[tuple, float]]:
    response = api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}", **extra)
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """Every sample by name, then by its sorted labels."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


# --- access ----------------------------------------------------------------------------------------
def test_it_does_not_exist_when_neither_a_token_nor_networks_are_configured(api, settings):
    settings.MODELGATE_METRICS_TOKEN, settings.MODELGATE_METRICS_ALLOW = None, []
    response = api.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_it_refuses_a_scrape_without_its_token(api, token, alice):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong-token-0123456789"}, {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
                    {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"}, alice.auth):  # a tenant's API key opens no metrics
        response = api.get("/metrics", **headers)
        assert response.status_code == 401, headers
        error = response.json()["error"]
        assert error["code"] == "not_authenticated" and "MODELGATE_METRICS_TOKEN" in error["message"] and error["request_id"]
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"modelgate_" not in response.content
    response = api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")


def test_it_refuses_an_address_outside_the_allowed_networks(api, settings):
    settings.MODELGATE_METRICS_TOKEN = None
    settings.MODELGATE_METRICS_ALLOW = [__import__("ipaddress").ip_network("10.0.0.0/8")]
    response = api.get("/metrics")  # the test client comes from 127.0.0.1
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
    assert api.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200  # no token needed: none is set
    assert api.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert api.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 200
    assert api.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code == 403


def test_with_both_a_scrape_needs_the_network_and_the_token(api, settings):
    settings.MODELGATE_METRICS_TOKEN = TOKEN
    settings.MODELGATE_METRICS_ALLOW = [__import__("ipaddress").ip_network("127.0.0.0/8")]
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403
    assert api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_only_get_reads_the_metrics(api, token):
    response = api.post("/metrics", {}, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("variable, value, message", [
    ("MODELGATE_METRICS_TOKEN", "short", "MODELGATE_METRICS_TOKEN must be at least 16 characters"),
    ("MODELGATE_METRICS_ALLOW", "10.0.0.0/8,intranet", "MODELGATE_METRICS_ALLOW items are addresses or networks"),
])
def test_a_bad_metrics_setting_stops_the_process_with_a_clear_message(variable, value, message):
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], env={**os.environ, variable: value},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr


# --- the series ------------------------------------------------------------------------------------
def test_a_request_is_counted_in_its_labels_with_its_latency_and_cost(api, token, alice, bob, starter):
    before = scrape(api)
    response = post(api, "/v1/detect-language", DETECT, alice, HTTP_X_REQUEST_ID="metrics-count-1")
    assert response.status_code == 200, response.content
    after = scrape(api)

    [record] = InferenceRecord.objects.filter(request_id="metrics-count-1")
    assert record.cost > 0
    counted = {name: value(after, name, **labels) - value(before, name, **labels) for name, labels in [
        ("modelgate_inference_requests_total", LID),
        ("modelgate_inference_latency_seconds_count", {"task": "language_id", "tier": "local"}),
        ("modelgate_inference_cost_total", {"model": "lid-176", "tier": "local"}),
        ("modelgate_tenant_cost_total", {"tenant": alice.tenant.slug}),
        ("modelgate_tenant_cost_total", {"tenant": bob.tenant.slug}),
    ]}
    assert counted["modelgate_inference_requests_total"] == 1
    assert counted["modelgate_inference_latency_seconds_count"] == 1
    assert counted["modelgate_inference_cost_total"] == pytest.approx(float(record.cost))
    assert value(after, "modelgate_tenant_cost_total", tenant=alice.tenant.slug) - \
        value(before, "modelgate_tenant_cost_total", tenant=alice.tenant.slug) == pytest.approx(float(record.cost))
    assert value(after, "modelgate_tenant_cost_total", tenant=bob.tenant.slug) == \
        value(before, "modelgate_tenant_cost_total", tenant=bob.tenant.slug)  # bob spent nothing
    seconds = record.latency_ms / 1000
    bucket = next(le for le in ("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0")
                  if seconds <= float(le))
    name = "modelgate_inference_latency_seconds_bucket"
    assert value(after, name, task="language_id", tier="local", le=bucket) - \
        value(before, name, task="language_id", tier="local", le=bucket) == 1


def test_a_refused_request_is_counted_as_rejected(api, token, alice, starter):
    Budget.objects.create(tenant=alice.tenant, limit=Decimal("0"))
    labels = {**LID, "status": "rejected"}
    before = value(scrape(api), "modelgate_inference_requests_total", **labels)
    response = post(api, "/v1/detect-language", DETECT, alice)
    assert response.status_code == 402, response.content
    assert value(scrape(api), "modelgate_inference_requests_total", **labels) == before + 1


def test_a_record_the_reaper_closes_is_counted_once_as_abandoned(api, token, alice, settings):
    from datetime import timedelta

    from django.utils import timezone

    from routing.tasks import reap_abandoned

    labels = {**LID, "status": "abandoned"}
    before = value(scrape(api), "modelgate_inference_requests_total", **labels)
    InferenceRecord.objects.create(tenant=alice.tenant, api_key=alice.key, task="language_id", model_slug="lid-176",
                                   tier="local", request_id="metrics-abandoned",
                                   created_at=timezone.now() - timedelta(seconds=settings.MODELGATE_REQUEST_TIMEOUT + 120))
    assert reap_abandoned() == 1
    assert reap_abandoned() == 0
    assert value(scrape(api), "modelgate_inference_requests_total", **labels) == before + 1


def test_budgets_are_read_from_the_database_when_scraped(api, token, alice, bob, starter):
    Budget.objects.create(tenant=alice.tenant, limit=Decimal("5"))
    assert post(api, "/v1/detect-language", DETECT, alice).status_code == 200
    Budget.objects.filter(tenant=alice.tenant).update(reserved=Decimal("0.25"))  # as a call in flight holds
    budget = Budget.objects.get(tenant=alice.tenant)
    assert budget.spent > 0

    samples = scrape(api)
    alice_labels = {"tenant": alice.tenant.slug}
    assert value(samples, "modelgate_budget_limit", **alice_labels) == 5.0
    assert value(samples, "modelgate_budget_spent", **alice_labels) == pytest.approx(float(budget.spent))
    assert value(samples, "modelgate_budget_held", **alice_labels) == 0.25
    assert value(samples, "modelgate_budget_period_end_timestamp_seconds", **alice_labels) == budget.period_end.timestamp()
    assert not any(dict(labels).get("tenant") == bob.tenant.slug for labels in samples["modelgate_budget_limit"])
    assert value(samples, "modelgate_scrape_error", source="budgets") == 0


def test_the_task_queue_and_the_tuners_decisions_are_read_when_scraped(api, token, alice):
    from django_q.tasks import async_task

    before = scrape(api)
    queued = value(before, "modelgate_task_queue_depth", state="queued")
    async_task("math.floor", 1.5)
    async_task("math.floor", 2.5)
    policy = RoutingPolicy.objects.create(tenant=alice.tenant, task="classification", candidates=[])
    tuning.set_floor(policy, 0.7, actor="ops")
    tuning.set_floor(policy, 0.7, actor="ops")  # kept

    after = scrape(api)
    assert value(after, "modelgate_task_queue_depth", state="queued") == queued + 2
    assert value(after, "modelgate_threshold_decisions_total", decided_by="operator", changed="true") == 1
    assert value(after, "modelgate_threshold_decisions_total", decided_by="operator", changed="false") == 1
    assert value(after, "modelgate_scrape_error", source="task_queue") == 0
    assert value(after, "modelgate_scrape_error", source="tuner") == 0


def test_a_scheduled_tuner_run_is_counted(api, token, db):
    from routing.tasks import tune_policies

    before = value(scrape(api), "modelgate_tuner_runs_total")
    tune_policies()
    assert value(scrape(api), "modelgate_tuner_runs_total") == before + 1


def test_the_model_servers_pool_statistics_are_asked_for_when_scraped(api, token, alice, starter):
    assert post(api, "/v1/detect-language", DETECT, alice).status_code == 200
    [address] = registry_services.get_pool().servers
    samples = scrape(api)
    server, model = {"server": address}, {"server": address, "model": "lid-176"}
    assert value(samples, "modelgate_model_server_up", **server) == 1
    assert value(samples, "modelgate_model_server_loaded_models", **server) >= 1
    assert value(samples, "modelgate_model_server_memory_budget_bytes", **server) > 0
    assert value(samples, "modelgate_model_loaded", **model) == 1
    assert value(samples, "modelgate_model_batches_total", **model) >= 1
    assert value(samples, "modelgate_model_batch_items_total", **model) >= value(samples, "modelgate_model_batches_total", **model)
    assert value(samples, "modelgate_model_batch_size", **model, stat="max") >= 1
    assert (("model", "lid-176"), ("server", address)) in samples["modelgate_model_queue_depth"]
    assert value(samples, "modelgate_model_batch_milliseconds", **model, phase="compute", quantile="0.95") > 0


def test_a_model_server_that_is_gone_is_down_not_a_failed_scrape(api, token, monkeypatch, tmp_path):
    gone = f"unix://{tmp_path / 'gone.sock'}"
    monkeypatch.setattr(registry_services, "_pool", registry_services.fleet([gone]))
    samples = scrape(api)
    assert value(samples, "modelgate_model_server_up", server=gone) == 0
    assert value(samples, "modelgate_scrape_error", source="model_servers") == 0


def test_circuit_breaker_states_and_openings(api, token, db):
    name = "metrics-test-provider"
    breaker = breaker_for(name, threshold=2, cooldown=60)
    breaker.reset()
    before = scrape(api)
    assert value(before, "modelgate_circuit_breaker_state", breaker=name) == 0
    breaker.record_failure()
    breaker.record_failure()
    opened = scrape(api)
    assert value(opened, "modelgate_circuit_breaker_state", breaker=name) == 2
    assert value(opened, "modelgate_circuit_breaker_opened_total", breaker=name) == \
        value(before, "modelgate_circuit_breaker_opened_total", breaker=name) + 1
    breaker.reset()
    assert value(scrape(api), "modelgate_circuit_breaker_state", breaker=name) == 0


def test_it_speaks_openmetrics_when_asked(api, token, db):
    response = api.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.rstrip().endswith(b"# EOF")


# --- several processes -----------------------------------------------------------------------------
def test_a_scrape_forgets_the_breaker_states_of_processes_that_are_gone(tmp_path):
    """A task-cluster worker that was recycled never passes through gunicorn's child_exit."""
    from core.metrics import sweep_dead_processes

    wrote = ("import os; from prometheus_client import Counter, Gauge; "
             "Gauge('g', '', ['breaker'], multiprocess_mode='livemax').labels('p').set(2); "
             "Counter('c', '', ['x']).labels('y').inc(); print(os.getpid())")
    pid = int(subprocess.run([sys.executable, "-c", wrote], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
                             check=True, capture_output=True, text=True, timeout=60).stdout)
    alive = tmp_path / f"gauge_livemax_{os.getpid()}.db"
    shutil.copy(tmp_path / f"gauge_livemax_{pid}.db", alive)  # as if this process held a state too

    sweep_dead_processes(str(tmp_path))

    assert not (tmp_path / f"gauge_livemax_{pid}.db").exists()
    assert alive.exists() and (tmp_path / f"counter_{pid}.db").exists()


class Gunicorn:
    """A real gunicorn with `workers` workers counting into `metrics_dir`, as `manage.py serve` starts it."""

    def __init__(self, *, tmp_path: Path, workers: int, model_server: str, database_url: str | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tmp_path / "metrics"
        self.metrics_dir.mkdir()
        self.log = tmp_path / "gunicorn.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "platform"), os.environ.get("PYTHONPATH")])),
            "DATABASE_URL": database_url or url_of_the_test_database(),
            "SECRET_KEY": settings.SECRET_KEY,
            "MODELGATE_DATA_DIR": str(tmp_path),
            "MODELGATE_LOG_LEVEL": "WARNING",
            "MODELGATE_PREPARE_MODELS_ON_START": "0",
            "MODELGATE_ROUTING_CACHE_SECONDS": "0",
            "MODELGATE_MODEL_SERVERS": model_server,
            "MODELGATE_METRICS_TOKEN": TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "config.wsgi:application",
                 "--config", str(ROOT / "platform" / "config" / "gunicorn_conf.py"),
                 "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--threads", "2"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def request(self, path: str, *, key: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode() if body is not None else None,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()

    def wait_ready(self, timeout: float = 90, *, probe: str = "/ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-5000:]
            try:
                if self.request(probe)[0] == 200 and len(self.workers()) == 2:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError("gunicorn was not ready:\n" + self.log.read_text(errors="replace")[-5000:])

    def workers(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.proc.pid).children()]

    def scrape(self) -> dict[str, dict[tuple, float]]:
        status, body = self.request("/metrics", key=TOKEN)
        assert status == 200, body
        return parse(body.decode())

    def counted_by_each_process(self, tmp_path: Path) -> dict[int, float]:
        """The LID requests each process's own file holds (read alone, as if it were the only process)."""
        counted = {}
        for file in self.metrics_dir.glob("counter_*.db"):
            alone = tmp_path / f"alone-{file.stem}"
            alone.mkdir(exist_ok=True)
            shutil.copy(file, alone / file.name)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(alone))
            counted[int(file.stem.split("_")[1])] = sum(
                sample.value for family in registry.collect() for sample in family.samples
                if sample.name == "modelgate_inference_requests_total" and sample.labels == LID)
        return counted

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.mark.django_db(transaction=True)  # the server's workers only see committed rows
def test_two_workers_counts_add_up_and_survive_a_killed_worker(alice, starter, tmp_path):
    [model_server] = registry_services.get_pool().servers
    server = Gunicorn(tmp_path=tmp_path, workers=2, model_server=model_server)
    try:
        server.wait_ready()
        sent = 0
        with ThreadPoolExecutor(8) as executor:
            # Until both workers have answered some (the kernel hands connections to whichever accepts first).
            while sent < 400:
                replies = list(executor.map(lambda _: server.request("/v1/detect-language", key=alice.secret, body=DETECT),
                                            range(16)))
                assert all(status == 200 for status, _ in replies), replies[:2]
                sent += len(replies)
                per_process = server.counted_by_each_process(tmp_path)
                if sum(1 for counted in per_process.values() if counted > 0) >= 2:
                    break
        per_process = server.counted_by_each_process(tmp_path)
        assert sum(1 for counted in per_process.values() if counted > 0) == 2, per_process
        assert sum(per_process.values()) == sent

        samples = server.scrape()
        assert value(samples, "modelgate_inference_requests_total", **LID) == sent
        assert value(samples, "modelgate_inference_latency_seconds_count", task="language_id", tier="local") == sent
        charged = sum(InferenceRecord.objects.filter(tenant=alice.tenant).values_list("cost", flat=True))
        assert value(samples, "modelgate_tenant_cost_total", tenant=alice.tenant.slug) == pytest.approx(float(charged))
        assert value(samples, "modelgate_model_server_up", server=model_server) == 1
        # Each worker has its own breaker for the model server; the scrape shows the worst (all closed).
        assert value(samples, "modelgate_circuit_breaker_state", breaker=f"model server {model_server}") == 0
        assert (("breaker", f"model server {model_server}"),) in samples["modelgate_circuit_breaker_state"]

        # A worker killed outright: gunicorn starts another, and what the dead one counted still counts.
        victim = max(per_process, key=per_process.get)
        assert (server.metrics_dir / f"gauge_livemax_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in server.workers() or len(server.workers()) < 2:
            assert time.monotonic() < deadline, "gunicorn did not replace its killed worker"
            time.sleep(0.2)
        server.wait_ready()
        assert not (server.metrics_dir / f"gauge_livemax_{victim}.db").exists()  # its breaker states are no one's
        assert (server.metrics_dir / f"counter_{victim}.db").exists()
        assert server.request("/v1/detect-language", key=alice.secret, body=DETECT)[0] == 200
        assert value(server.scrape(), "modelgate_inference_requests_total", **LID) == sent + 1
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_serve_counts_into_a_fresh_directory_each_start(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELGATE_METRICS_TOKEN", TOKEN)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    # A previous start's counts, as its workers left them.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    counted_before = ("from prometheus_client import Counter; Counter('modelgate_inference_requests', '', "
                      f"{sorted(LID)!r}).labels(**{LID!r}).inc(1000)")
    subprocess.run([sys.executable, "-c", counted_before], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
                   check=True, timeout=60)
    [stale] = metrics_dir.glob("counter_*.db")

    served = Served(free_port(), tmp_path, workers=2)
    try:
        served.wait_for(r"Modelgate is ready")
        key = served.wait_for(r"key:\s+(mg_\S+)")[1]
        assert not stale.exists()
        status, body = served.post("/v1/detect-language", key, DETECT)
        assert status == 200, body
        assert served.get("/metrics")[0] == 401
        status, body = served.get("/metrics", TOKEN)
        assert status == 200, body
        samples = parse(body.decode())
        assert value(samples, "modelgate_inference_requests_total", **LID) == 1
        [server] = [labels for labels, up in samples["modelgate_model_server_up"].items() if up == 1]
        assert dict(server)["server"].startswith("unix://")
        assert value(samples, "modelgate_scrape_error", source="task_queue") == 0
        assert any(metrics_dir.glob("counter_*.db"))
    finally:
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=60) == 0, "".join(served.lines)


@pytest.mark.django_db(transaction=True)
def test_with_the_database_down_the_scrape_still_answers_what_was_counted(tmp_path):
    [model_server] = registry_services.get_pool().servers
    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/modelgate"  # nothing listens there
    server = Gunicorn(tmp_path=tmp_path, workers=2, model_server=model_server, database_url=closed)
    try:
        server.wait_ready(probe="/health")
        assert server.request("/ready")[0] == 503
        started = time.monotonic()
        samples = server.scrape()
        assert time.monotonic() - started < 30  # one failed connect, not one per source
        for source in ("budgets", "task_queue", "tuner"):
            assert value(samples, "modelgate_scrape_error", source=source) == 1
        assert value(samples, "modelgate_scrape_error", source="model_servers") == 0
        assert value(samples, "modelgate_model_server_up", server=model_server) == 1
        # What the workers count is still served (their model server breakers, written to the shared files).
        assert (("breaker", f"model server {model_server}"),) in samples["modelgate_circuit_breaker_state"]
        assert "modelgate_budget_limit" not in samples
    finally:
        server.stop()
