"""Prometheus series counted as things happen (inference attempts, their latency and cost, circuit
breaker states), in one place for every app; /metrics (config.metrics) adds what is read at scrape time.

Under `manage.py serve` every web worker and task-cluster process writes its values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode) and a scrape, whichever worker answers
it, sums them all. Without that variable (tests, runserver) the values live in this process only.
The variable is read when prometheus_client is first imported: it must be in the environment before
Django starts, which is why `serve` sets it for its children rather than settings.py.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from core.processes import alive

logger = logging.getLogger("modelgate.metrics")

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

# Our own registry rather than prometheus_client's global one: in a single process the global one would
# add the process collectors, which in multiprocess mode only describe the worker a scrape happened to hit.
REGISTRY = CollectorRegistry(auto_describe=True)

# Inference: from a fraction of a second (a cached or small local answer) to minutes (long generations).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

INFERENCE_REQUESTS = Counter(
    "modelgate_inference_requests",
    "Inference attempts completed, one per InferenceRecord: a request that escalates counts once per model "
    "it tried. status is ok, escalated, error, rejected, or abandoned (closed by the reaper after its request "
    "died); purpose is answer, or evaluation (shadow sampling).",
    ["task", "model", "tier", "status", "purpose"],
    registry=REGISTRY,
)
SERVED_BELOW_FLOOR = Counter(
    "modelgate_served_below_floor",
    "Requests answered by a local model below its confidence floor because every escalation failed. The "
    "local attempt was counted in modelgate_inference_requests when it escalated (status escalated when "
    "all its items did); its record says ok once its answer is served.",
    ["task", "model"],
    registry=REGISTRY,
)
INFERENCE_LATENCY = Histogram(
    "modelgate_inference_latency_seconds",
    "Wall time of an inference attempt, from its admission to its completion (queue and compute included).",
    ["task", "tier"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_COST = Counter(
    "modelgate_inference_cost",
    "Money charged for inference attempts (in the unit prices are set in), by model.",
    ["model", "tier"],
    registry=REGISTRY,
)
TENANT_COST = Counter(
    "modelgate_tenant_cost",
    "Money charged for inference attempts (in the unit prices are set in), by tenant slug: one series per "
    "tenant that spent anything since the start.",
    ["tenant"],
    registry=REGISTRY,
)
TUNER_RUNS = Counter(
    "modelgate_tuner_runs",
    "Scheduled tuner runs completed (each decides every auto-tuned policy's floor), counted by the task "
    "cluster: visible here when it shares this node's PROMETHEUS_MULTIPROC_DIR (make run).",
    registry=REGISTRY,
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
BREAKER_STATE = Gauge(
    "modelgate_circuit_breaker_state",
    "Circuit breaker of a premium provider or a model server: 0 closed, 1 half-open (one probe call in "
    "flight), 2 open (refusing calls; still 2 once its cooldown is over, until the next call probes). "
    "Each process keeps its own breakers: across processes, the worst state.",
    ["breaker"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
BREAKER_OPENED = Counter(
    "modelgate_circuit_breaker_opened",
    "Times a circuit breaker opened (or re-opened after a failed probe), summed over processes.",
    ["breaker"],
    registry=REGISTRY,
)


def observe_attempt(record: Any) -> None:
    """Count a completed or failed InferenceRecord (called once, after its row was written). Never
    raises: the record is written and the money moved, and the client must get its answer."""
    try:
        seconds = (record.latency_ms or 0.0) / 1000
        INFERENCE_REQUESTS.labels(record.task, record.model_slug, record.tier, record.status, record.purpose).inc()
        INFERENCE_LATENCY.labels(record.task, record.tier).observe(seconds)
        cost = float(record.cost or Decimal("0"))
        if cost > 0:
            INFERENCE_COST.labels(record.model_slug, record.tier).inc(cost)
            TENANT_COST.labels(tenant_slug(record)).inc(cost)
    except Exception:
        logger.exception("inference not counted in the metrics", extra={"record": str(record.pk)})


def observe_served_below_floor(record: Any) -> None:
    """Count a local answer served below the floor after its escalation failed. Never raises."""
    try:
        SERVED_BELOW_FLOOR.labels(record.task, record.model_slug).inc()
    except Exception:
        logger.exception("inference not counted in the metrics", extra={"record": str(record.pk)})


def observe_abandoned(record: Any) -> None:
    """Count a pending record the reaper closed: its request died, so it has no latency or cost."""
    try:
        INFERENCE_REQUESTS.labels(record.task, record.model_slug, record.tier, "abandoned", record.purpose).inc()
    except Exception:
        logger.exception("inference not counted in the metrics", extra={"record": str(record.pk)})


def tenant_slug(record: Any) -> str:
    """The record's tenant slug without a query when the request already loaded its tenant (through the
    key); otherwise read once per process (slugs are stable identifiers)."""
    for owner, field in ((record, "tenant"), (_cached(record, "api_key"), "tenant")):
        tenant = _cached(owner, field)
        if tenant is not None:
            _slugs[tenant.pk] = tenant.slug
            return tenant.slug
    if record.tenant_id not in _slugs:
        tenant = record.tenant  # one query, in background work (shadow evaluations) only
        _slugs[tenant.pk] = tenant.slug
    return _slugs[record.tenant_id]


_slugs: dict[Any, str] = {}


def _cached(instance: Any, field: str) -> Any:
    if instance is None:
        return None
    return instance._state.fields_cache.get(field)


def breaker_changed(name: str, state: str) -> None:
    """inference.breaker's listener: every change of a breaker's state, and its creation (closed)."""
    BREAKER_STATE.labels(name).set(BREAKER_STATES.get(state, 0))
    if state == "open":
        BREAKER_OPENED.labels(name).inc()


# --- scraping ------------------------------------------------------------------------------------
class _Forward(Collector):
    """Another registry's metrics, inside a per-scrape registry."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def add_recorded(registry: CollectorRegistry) -> None:
    """Add what was counted to a scrape's registry: every process's files in multiprocess mode (the
    processes that are gone swept first), else this process's values."""
    if MULTIPROC_DIR:
        sweep_dead_processes(MULTIPROC_DIR)
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
    else:
        registry.register(_Forward(REGISTRY))


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def fresh_multiproc_dir(default: Path) -> Path:
    """PROMETHEUS_MULTIPROC_DIR for a start of the whole node (the operator's, else `default`), emptied:
    the files of a previous start's processes would otherwise be summed into this one's counts."""
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


def sweep_dead_processes(path: str) -> None:
    """Forget the live gauges (breaker states) of processes that ended without gunicorn's child_exit
    (a killed worker, a task-cluster worker that was recycled): their states are no one's any more.
    Counters and histograms of ended processes stay: what they counted happened."""
    for pid in _pids(glob.glob(os.path.join(path, "gauge_live*_*.db"))):
        if not alive(pid):
            multiprocess.mark_process_dead(pid, path)


def _pids(files: Iterable[str]) -> Iterator[int]:
    seen: set[int] = set()
    for name in files:
        match = _LIVE_FILE.search(os.path.basename(name))
        if match and int(match[1]) not in seen:
            seen.add(int(match[1]))
            yield int(match[1])
