"""gunicorn settings for `manage.py serve`: web workers hold no models (the model server does)."""

worker_class = "gthread"
# Inference can take a while; the router enforces its own per-request timeouts below this.
timeout = 300
graceful_timeout = 30
keepalive = 5
# gunicorn's longest request line (8,190 bytes, its maximum; the default is 4,094): URLs up to
# MODELGATE_MAX_URL_BYTES (8,000) reach Django, which answers a longer one with a 414 in the error shape;
# gunicorn answers a line longer still itself, in the same shape (config.gunicorn_errors).
limit_request_line = 8190
accesslog = None  # config.middleware logs one JSON line per request, with tenant and latency
errorlog = "-"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
# Several servers (a test run beside `make run`) must not fight over one control socket.
control_socket_disable = True
# Django and the provider SDKs load once in the master and the workers fork from it: their pages are
# shared (copy-on-write) instead of loaded again by every worker, and a worker is serving at once.
preload_app = True


def on_starting(server: object) -> None:
    """In the master, before the workers fork: requests gunicorn refuses itself get the API's error shape."""
    from config import gunicorn_errors

    gunicorn_errors.install()


def when_ready(server: object) -> None:
    """In the master, before the workers fork: the provider SDKs (1.5 s and ~70 MB of imports that the
    first premium request of every worker would otherwise pay, each for itself)."""
    import importlib

    for name in ("openai", "anthropic", "routing.providers"):
        importlib.import_module(name)


def post_worker_init(worker: object) -> None:
    """Ask the model server to load the models marked `preload`, while the worker already serves."""
    from django.db import connections

    from registry.services import preload_models

    connections.close_all()  # never share the master's database connections with a forked worker
    preload_models()


def child_exit(server: object, worker: object) -> None:
    """In the master, when a worker has exited: its live gauges (breaker states) leave /metrics; what it
    counted stays (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR set by `serve`)."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
