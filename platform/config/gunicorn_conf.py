"""gunicorn settings for `manage.py serve`: threads share one model pool, so requests batch together."""

worker_class = "gthread"
# Inference can take a while; the router enforces its own per-request timeouts below this.
timeout = 300
graceful_timeout = 30
keepalive = 5
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


def post_worker_init(worker: object) -> None:
    """Start loading the models marked `preload`, and the provider SDKs (1.5 s of imports that the
    first premium request would otherwise pay), while the worker already serves."""
    import importlib
    import threading

    from registry.services import preload_models

    preload_models()
    threading.Thread(
        target=lambda: [importlib.import_module(name) for name in ("routing.providers", "openai", "anthropic")],
        name="import-provider-sdks",
        daemon=True,
    ).start()
