"""GET /metrics: the Prometheus exposition of what was counted (core.metrics, every worker's in
multiprocess mode) and of what is read when scraped: budgets, the task queue, the tuner's decisions and
the model servers' pools.

Access: a bearer token (MODELGATE_METRICS_TOKEN) and/or allowed client networks (MODELGATE_METRICS_ALLOW);
with both, a scrape needs both. With neither the endpoint does not exist (404): metrics name tenants and
models, so they are never public by default.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import Count, F, Max, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core import metrics
from core.errors import error_response

logger = logging.getLogger("modelgate.metrics")

MB = 1024 * 1024


# --- access ----------------------------------------------------------------------------------------
def refusal(request: HttpRequest) -> JsonResponse | None:
    """Why this scrape may not read the metrics, as the response to give, or None when it may."""
    token: str | None = settings.MODELGATE_METRICS_TOKEN
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = settings.MODELGATE_METRICS_ALLOW
    if not token and not networks:
        return error_response(404, "not_found", f"No route for {request.path}.")
    if networks and not _from(request, networks):
        return error_response(403, "permission_denied", "Metrics may not be read from this address.")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            response = error_response(401, "not_authenticated", "Metrics need `Authorization: Bearer <MODELGATE_METRICS_TOKEN>`.")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return None


def _from(request: HttpRequest, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    # The socket's peer, never a forwarded header a client could write: behind a proxy, use the token.
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@csrf_exempt  # it changes nothing; a POST gets the 405 below rather than a CSRF page
def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = refusal(request)
    if refused is not None:
        return refused
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, "method_not_allowed", f"Method {request.method} is not allowed on /metrics; use GET.")
        response["Allow"] = "GET, HEAD"
        return response
    registry = CollectorRegistry(auto_describe=False)
    for collector in SCRAPED:
        registry.register(collector)
    # Read after the scraped sources: reaching the model servers may create this worker's breakers.
    metrics.add_recorded(registry)
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)


# --- read when scraped -----------------------------------------------------------------------------
class ScrapedCollector(Collector):
    """What is read when scraped, source by source. A source that fails costs its own series (and
    sets modelgate_scrape_error for it), never the whole scrape."""

    def __init__(self, sources: list[Source]):
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        error = GaugeMetricFamily("modelgate_scrape_error", "1 when a source of these metrics could not be read "
                                  "during this scrape (see the log), else 0.", labels=["source"])
        families: list[Metric] = []
        database_down = False
        for source in self.sources:
            if source.uses_database and database_down:
                error.add_metric([source.name], 1)  # not one more connect timeout per source
                continue
            try:
                families.extend(list(source.read()))  # all of a source's series, or none
                error.add_metric([source.name], 0)
            except Exception as exc:  # a broken source must not hide the others
                logger.warning("metrics source failed", extra={"source": source.name, "error": repr(exc)})
                error.add_metric([source.name], 1)
                database_down = database_down or (source.uses_database and isinstance(exc, (OperationalError, InterfaceError)))
        return [*families, error]


class Source:
    name = ""
    uses_database = True

    def read(self) -> Iterable[Metric]:
        raise NotImplementedError


class BudgetSource(Source):
    """Every tenant budget's limit, spent and held money as stored now (never counted: the database is
    the truth, whichever worker charged)."""

    name = "budgets"

    def read(self) -> Iterator[Metric]:
        from billing.models import Budget

        families = {
            "limit": GaugeMetricFamily("modelgate_budget_limit", "A tenant budget's limit for its period.", labels=["tenant"]),
            "spent": GaugeMetricFamily("modelgate_budget_spent", "Money charged to a tenant budget in its period.", labels=["tenant"]),
            "reserved": GaugeMetricFamily("modelgate_budget_held", "Money held on a tenant budget for calls in flight.", labels=["tenant"]),
            "period_end": GaugeMetricFamily("modelgate_budget_period_end_timestamp_seconds",
                                            "When a tenant budget's current period ends (Unix time).", labels=["tenant"]),
        }
        rows = Budget.objects.values_list("tenant__slug", "limit", "spent", "reserved", "period_end").order_by("tenant__slug")
        for slug, limit, spent, reserved, period_end in rows:
            families["limit"].add_metric([slug], float(limit))
            families["spent"].add_metric([slug], float(spent))
            families["reserved"].add_metric([slug], float(reserved))
            families["period_end"].add_metric([slug], period_end.timestamp())
        yield from families.values()


class TaskQueueSource(Source):
    """django-q2's queue, from its broker (the database table, or Redis): tasks waiting for a worker
    and tasks a worker has taken and not finished."""

    name = "task_queue"

    def read(self) -> Iterator[Metric]:
        from django_q.brokers import get_broker

        broker = get_broker()
        depth = GaugeMetricFamily("modelgate_task_queue_depth", "django-q2 tasks by state: queued (waiting for a "
                                  "worker) or running (taken, not acknowledged yet).", labels=["state"])
        depth.add_metric(["queued"], broker.queue_size() or 0)
        running = broker.lock_size()
        if running is not None:
            depth.add_metric(["running"], running)
        yield depth


class TunerSource(Source):
    """The tuner's and operators' threshold decisions, counted from ThresholdChange rows (one per policy
    and tuning run, also when the floor was kept), so every process — the task cluster tunes — agrees."""

    name = "tuner"

    def read(self) -> Iterator[Metric]:
        from routing.models import ThresholdChange

        decisions = CounterMetricFamily("modelgate_threshold_decisions", "Confidence-floor decisions recorded, by who "
                                        "decided (tuner, operator, rollback) and whether the floor changed.",
                                        labels=["decided_by", "changed"])
        rows = (ThresholdChange.objects.values("decided_by")
                .annotate(changed=Count("pk", filter=~Q(old=F("new"))), kept=Count("pk", filter=Q(old=F("new"))))
                .order_by("decided_by"))
        for row in rows:
            decisions.add_metric([row["decided_by"], "true"], row["changed"])
            decisions.add_metric([row["decided_by"], "false"], row["kept"])
        yield decisions
        last = ThresholdChange.objects.filter(decided_by=ThresholdChange.DecidedBy.TUNER).aggregate(at=Max("created_at"))["at"]
        if last is not None:
            yield GaugeMetricFamily("modelgate_tuner_last_run_timestamp_seconds",
                                    "When the tuner last decided a floor (Unix time).", value=last.timestamp())


class ModelServerSource(Source):
    """Pool and batching statistics asked of each model server (registry.services.model_servers_state):
    the servers hold the models for every worker, so their own counts are the truth. Counters restart
    with a model server (Prometheus' rate() reads that as a reset)."""

    name = "model_servers"
    uses_database = False  # placement is read from the database only when a request routes

    def read(self) -> Iterator[Metric]:
        from registry.services import model_servers_state

        return model_server_families(model_servers_state())


def model_server_families(servers: list[dict[str, Any]]) -> list[Metric]:
    server_labels, model_labels = ["server"], ["server", "model"]
    up = GaugeMetricFamily("modelgate_model_server_up", "1 when the model server answered this scrape.", labels=server_labels)
    memory = GaugeMetricFamily("modelgate_model_server_memory_bytes", "Memory the server's loaded models take (its own estimate).",
                               labels=server_labels)
    budget = GaugeMetricFamily("modelgate_model_server_memory_budget_bytes", "The server's memory budget for models.",
                               labels=server_labels)
    loaded_count = GaugeMetricFamily("modelgate_model_server_loaded_models", "Models loaded in the server now.", labels=server_labels)
    loaded = GaugeMetricFamily("modelgate_model_loaded", "1 when the model is loaded in the server now.", labels=model_labels)
    queued = GaugeMetricFamily("modelgate_model_queue_depth", "Items waiting for the model's batching thread now.", labels=model_labels)
    model_memory = GaugeMetricFamily("modelgate_model_memory_bytes", "Memory the model takes when loaded.", labels=model_labels)
    counters = {
        "loads": CounterMetricFamily("modelgate_model_loads", "Times the model was loaded.", labels=model_labels),
        "load_seconds": CounterMetricFamily("modelgate_model_load_seconds", "Time spent loading the model.", labels=model_labels),
        "batches": CounterMetricFamily("modelgate_model_batches", "Batches the model ran.", labels=model_labels),
        "items": CounterMetricFamily("modelgate_model_batch_items", "Items in the batches the model ran "
                                     "(items/batches is the mean batch size).", labels=model_labels),
        "errors": CounterMetricFamily("modelgate_model_batch_errors", "Batches of the model that failed.", labels=model_labels),
    }
    batch_size = GaugeMetricFamily("modelgate_model_batch_size", "Batch size over the model's recent batches (mean, max).",
                                   labels=[*model_labels, "stat"])
    timing = GaugeMetricFamily("modelgate_model_batch_milliseconds", "Queue wait and compute time per item over the model's "
                               "recent batches, by percentile.", labels=[*model_labels, "phase", "quantile"])
    for server in servers:
        address = server["address"]
        up.add_metric([address], 1 if server["up"] else 0)
        if not server["up"]:
            continue
        memory.add_metric([address], server["used_memory_mb"] * MB)
        if server.get("memory_budget_mb") is not None:
            budget.add_metric([address], server["memory_budget_mb"] * MB)
        loaded_count.add_metric([address], len(server["loaded"]))
        for slug, stats in sorted(server["models"].items()):
            labels = [address, slug]
            loaded.add_metric(labels, 1 if stats.get("loaded") else 0)
            queued.add_metric(labels, stats.get("queued", 0))
            model_memory.add_metric(labels, stats.get("memory_mb", 0.0) * MB)
            for field, family in counters.items():
                family.add_metric(labels, stats.get(field, 0))
            for stat in ("mean", "max"):
                if stats.get(f"{stat}_batch_size") is not None:
                    batch_size.add_metric([*labels, stat], stats[f"{stat}_batch_size"])
            for phase in ("queue", "compute"):
                for quantile in ("50", "95"):
                    value = stats.get(f"{phase}_ms_p{quantile}")
                    if value is not None:
                        timing.add_metric([*labels, phase, f"0.{quantile}"], value)
    return [up, memory, budget, loaded_count, loaded, queued, model_memory, *counters.values(), batch_size, timing]


SCRAPED: list[Collector] = [ScrapedCollector([BudgetSource(), TaskQueueSource(), TunerSource(), ModelServerSource()])]
