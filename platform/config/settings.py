"""Modelgate settings: everything configurable comes from the environment, read strictly."""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_email_url
from django.core.exceptions import ImproperlyConfigured

from config.db import configure_database, embedded_server_settings
from config.env import env_bool, env_decimal, env_float, env_int, env_list, env_path, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = env_path("MODELGATE_DATA_DIR", BASE_DIR / ".data")
PGDATA = env_path("MODELGATE_PGDATA", BASE_DIR / ".pgdata")
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    from_env = env_str("SECRET_KEY")
    if from_env:
        if len(from_env) < 32:
            raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long.")
        return from_env
    # Generated once per data directory and kept out of the repository (.data/ is ignored).
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("MODELGATE_CSRF_TRUSTED_ORIGINS", [])
# --- Transport security ---------------------------------------------------------------------
# MODELGATE_PRODUCTION turns on everything `manage.py check --deploy` asks for (HTTPS only, HSTS, secure
# cookies); each piece can still be set on its own. Off, `make run` serves plain http on loopback.
PRODUCTION = env_bool("MODELGATE_PRODUCTION", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when MODELGATE_PRODUCTION is on.")
MODELGATE_BEHIND_TLS_PROXY = env_bool("MODELGATE_BEHIND_TLS_PROXY", False)
if MODELGATE_BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env_bool("MODELGATE_SECURE_COOKIES", PRODUCTION or MODELGATE_BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("MODELGATE_SSL_REDIRECT", PRODUCTION)
# Probes and scrapes come over plain http from inside the network; they stay answerable without a redirect.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("MODELGATE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0, min_value=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("MODELGATE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("MODELGATE_HSTS_PRELOAD", PRODUCTION)
# An operator's admin session ends after this long, or when the browser closes.
SESSION_COOKIE_AGE = env_int("MODELGATE_SESSION_SECONDS", 8 * 3600, min_value=300, max_value=30 * 24 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "axes",
    "config.apps.PlatformConfig",
    "tenants",
    "registry",
    "embeddings",
    "routing",
    "billing",
]

MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "config.middleware.UrlLimitMiddleware",
    "config.middleware.RequestSizeLimitMiddleware",
    "billing.middleware.RateLimitHeadersMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: it turns a locked-out admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
EMBEDDED_PG_SETTINGS = embedded_server_settings(env_list("MODELGATE_EMBEDDED_PG_SETTINGS", []))
DATABASE_CHOICE = configure_database(
    url=env_str("DATABASE_URL"),
    pgdata=PGDATA,
    conn_max_age=env_int("MODELGATE_DB_CONN_MAX_AGE", 60, min_value=0),
    connect_timeout=env_int("MODELGATE_DB_CONNECT_TIMEOUT", 10, min_value=1, max_value=300),
    prepared_statements=env_bool("MODELGATE_DB_PREPARED_STATEMENTS", True),
    server_settings=EMBEDDED_PG_SETTINGS,
)
DATABASES = {"default": DATABASE_CHOICE.settings}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and background work --------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL must start with redis://, rediss:// or unix://; got {REDIS_URL!r}.")

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    # The database cache is shared by every process and machine on this database, unlike locmem.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "modelgate_cache",
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    }

_Q_TIMEOUT = env_int("MODELGATE_Q_TIMEOUT", 600, min_value=10)
Q_CLUSTER = {
    "name": "modelgate",
    "workers": env_int("MODELGATE_Q_WORKERS", 2, min_value=1, max_value=64),
    "timeout": _Q_TIMEOUT,
    # A task is handed out again only after it surely timed out.
    "retry": _Q_TIMEOUT + 60,
    "max_attempts": 3,
    "save_limit": 1000,
    "catch_up": False,
    "label": "Background tasks",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Email and alerts ------------------------------------------------------------------------
# EMAIL_URL (smtp://user:password@host:587/?tls=True, or smtp+ssl://…) turns on alert emails.
EMAIL_URL = env_str("EMAIL_URL")
if EMAIL_URL:
    try:
        if EMAIL_URL.split("://", 1)[0] not in dj_email_url.SCHEMES:
            raise ValueError(f"the scheme must be one of {', '.join(sorted(dj_email_url.SCHEMES))}")
        vars().update(dj_email_url.parse(EMAIL_URL))
    except (KeyError, ValueError) as exc:
        raise ImproperlyConfigured(f"EMAIL_URL is not a valid email URL ({exc}); e.g. smtp://user:pass@host:587/?tls=True.") from None
DEFAULT_FROM_EMAIL = env_str("MODELGATE_EMAIL_FROM", "modelgate@localhost")
MODELGATE_ALERT_EMAILS = bool(EMAIL_URL)
# Budget-alert webhooks: attempts per alert, the first retry's delay (doubling after), and whether
# tenants may point them at private or loopback addresses (off: a webhook must not reach inside).
MODELGATE_WEBHOOK_ATTEMPTS = env_int("MODELGATE_WEBHOOK_ATTEMPTS", 5, min_value=1, max_value=10)
MODELGATE_WEBHOOK_RETRY_SECONDS = env_float("MODELGATE_WEBHOOK_RETRY_SECONDS", 2.0, min_value=0.0, max_value=60.0)
MODELGATE_WEBHOOK_TIMEOUT = env_float("MODELGATE_WEBHOOK_TIMEOUT", 10.0, min_value=0.5, max_value=60.0)
MODELGATE_WEBHOOK_ALLOW_PRIVATE = env_bool("MODELGATE_WEBHOOK_ALLOW_PRIVATE", False)
# Private networks webhooks may reach although MODELGATE_WEBHOOK_ALLOW_PRIVATE is off (an internal alert relay).
MODELGATE_WEBHOOK_ALLOW_NETWORKS = []
for _network in env_list("MODELGATE_WEBHOOK_ALLOW_NETWORKS", []):
    try:
        MODELGATE_WEBHOOK_ALLOW_NETWORKS.append(ipaddress.ip_network(_network, strict=False))
    except ValueError:
        raise ImproperlyConfigured(f"MODELGATE_WEBHOOK_ALLOW_NETWORKS items are addresses or networks (10.0.0.0/8, "
                                   f"fd00::/8); got {_network!r}.") from None

# --- Auth, i18n, static ---------------------------------------------------------------------
# Admin logins are rate-limited by django-axes: after MODELGATE_ADMIN_LOGIN_ATTEMPTS failures for one
# username from one address, that pair is locked out for MODELGATE_ADMIN_LOCKOUT_MINUTES (429), while
# the same operator from elsewhere, and other usernames, still log in. Failures are kept in PostgreSQL,
# so every process and machine counts the same ones.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("MODELGATE_ADMIN_LOGIN_ATTEMPTS", 5, min_value=1, max_value=100)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("MODELGATE_ADMIN_LOCKOUT_MINUTES", 15, min_value=1, max_value=7 * 24 * 60))
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_CLIENT_IP_CALLABLE = "config.security.client_address"
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve admin and API-docs assets straight from the installed apps: no collectstatic step.
WHITENOISE_USE_FINDERS = True

# --- Models ---------------------------------------------------------------------------------
MODELGATE_MODEL_CACHE = env_path("MODELGATE_MODEL_CACHE", DATA_DIR / "models")
MODELGATE_MODEL_CACHE.mkdir(parents=True, exist_ok=True)
# Extra directories models may be loaded from (besides the cache and installed model packages).
MODELGATE_MODEL_ROOTS = env_list("MODELGATE_MODEL_ROOTS", [])
# Soft cap on the weights one process keeps loaded; idle models are evicted least recently used first.
MODELGATE_MODEL_MEMORY_MB = env_int("MODELGATE_MODEL_MEMORY_MB", 6144, min_value=64)
MODELGATE_AUDIO_MAX_SECONDS = env_int("MODELGATE_AUDIO_MAX_SECONDS", 600, min_value=1, max_value=4 * 3600)
MODELGATE_BATCHING = env_bool("MODELGATE_BATCHING", True)
# Model servers (unix:///path or tcp://host:port) that hold the models for this process; empty: the
# process holds its own pool. A TCP model server needs the shared secret.
MODELGATE_MODEL_SERVERS = env_list("MODELGATE_MODEL_SERVERS", [])
for _address in MODELGATE_MODEL_SERVERS:
    if not re.match(r"^unix:///\S+$|^tcp://[^\s:/]+:\d{1,5}$", _address):
        raise ImproperlyConfigured(f"MODELGATE_MODEL_SERVERS items are unix:///path or tcp://host:port; got {_address!r}.")
MODELGATE_MODEL_SERVER_SECRET = env_str("MODELGATE_MODEL_SERVER_SECRET") or None
MODELGATE_MODEL_SERVER_SOCKET = env_path("MODELGATE_MODEL_SERVER_SOCKET", DATA_DIR / "modelserver.sock")
# The model server's native heap (glibc only; inference/memory.py says why): buffers from this many KiB
# up mapped on their own and returned when freed (0: glibc's moving threshold), malloc arenas it may use
# (0: glibc's 8 per core), and how often, in seconds, it hands freed pages back after inference work
# (0: never). An operator's MALLOC_MMAP_THRESHOLD_ / MALLOC_ARENA_MAX win. Without them the model
# server's RSS climbs with every new input shape. 1 MiB keeps inference latency as it was (bench
# model_memory: p50 ×1.02) for less than half the growth; 128 KiB halves the growth again but maps and
# faults in every mid-sized activation afresh (p50 ×1.2).
MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB = env_int("MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB", 1024, min_value=0, max_value=32768)
MODELGATE_MODEL_MALLOC_ARENA_MAX = env_int("MODELGATE_MODEL_MALLOC_ARENA_MAX", 2, min_value=0, max_value=1024)
MODELGATE_MODEL_TRIM_SECONDS = env_float("MODELGATE_MODEL_TRIM_SECONDS", 10.0, min_value=0.0, max_value=3600.0)
# Convert/assemble starter weights in the background at start, rather than on their first request.
MODELGATE_PREPARE_MODELS_ON_START = env_bool("MODELGATE_PREPARE_MODELS_ON_START", True)

# --- Routing ---------------------------------------------------------------------------------
MODELGATE_REQUEST_TIMEOUT = env_int("MODELGATE_REQUEST_TIMEOUT", 120, min_value=1, max_value=3600)
# A streamed chat's overall deadline (seconds): past it the upstream is closed and what was streamed is
# charged and recorded. The reaper leaves a stream that reports progress alone until this has passed.
MODELGATE_STREAM_TIMEOUT = env_int("MODELGATE_STREAM_TIMEOUT", 600, min_value=1, max_value=24 * 3600)
MODELGATE_MAX_OUTPUT_TOKENS = env_int("MODELGATE_MAX_OUTPUT_TOKENS", 1024, min_value=1)
# Shadow evaluation: what each tenant's premium "teacher" calls may spend per month (0: no shadow evaluation).
MODELGATE_EVALUATION_ALLOWANCE = env_decimal("MODELGATE_EVALUATION_ALLOWANCE", "5", min_value="0")
# How often the tuner re-tunes every unlocked auto-tune policy (minutes).
MODELGATE_TUNE_MINUTES = env_int("MODELGATE_TUNE_MINUTES", 60, min_value=1, max_value=7 * 24 * 60)
# What a second of local compute costs, for models registered from now on (the starter pack, pulls):
# small but not zero, so that local work shows in usage reports. Each model's price stays editable.
MODELGATE_LOCAL_COMPUTE_PRICE = env_decimal("MODELGATE_LOCAL_COMPUTE_PRICE", "0.00002", min_value="0")
# Prices, budgets and costs are in whatever currency prices are entered in; the admin writes amounts with this.
MODELGATE_CURRENCY_SYMBOL = env_str("MODELGATE_CURRENCY_SYMBOL", "$")
# Days inference records keep their input/output previews and full texts (a tenant may set its own);
# an hourly prune blanks older ones and keeps everything else (costs, usage, latency). 0: keep them.
MODELGATE_RECORD_RETENTION_DAYS = env_int("MODELGATE_RECORD_RETENTION_DAYS", 30, min_value=0, max_value=36_500)
# Rows a tenant deletion or a retention prune handles per transaction.
MODELGATE_DELETION_BATCH = env_int("MODELGATE_DELETION_BATCH", 2000, min_value=10, max_value=100_000)
MODELGATE_MAX_BATCH_ITEMS = env_int("MODELGATE_MAX_BATCH_ITEMS", 128, min_value=1)
MODELGATE_MAX_BATCH_CHARACTERS = env_int("MODELGATE_MAX_BATCH_CHARACTERS", 200_000, min_value=1000)
# How long a process reuses routing policies, model specs and provider settings it has read.
MODELGATE_ROUTING_CACHE_SECONDS = env_int("MODELGATE_ROUTING_CACHE_SECONDS", 5, min_value=0, max_value=3600)
# Fernet keys for provider credentials at rest, newest first; derived from SECRET_KEY when unset.
MODELGATE_ENCRYPTION_KEYS = env_list("MODELGATE_ENCRYPTION_KEYS", [])
# Operator credentials may also come from the environment (a stored credential wins).
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")

# --- Collections (embeddings store) ---------------------------------------------------------
MODELGATE_COLLECTIONS_PER_TENANT = env_int("MODELGATE_COLLECTIONS_PER_TENANT", 100, min_value=1)
MODELGATE_COLLECTION_MAX_DOCUMENTS = env_int("MODELGATE_COLLECTION_MAX_DOCUMENTS", 1_000_000, min_value=1)
MODELGATE_COLLECTION_DOCUMENTS_PER_REQUEST = env_int("MODELGATE_COLLECTION_DOCUMENTS_PER_REQUEST", 256, min_value=1, max_value=10_000)
MODELGATE_COLLECTION_MAX_TEXT_CHARACTERS = env_int("MODELGATE_COLLECTION_MAX_TEXT_CHARACTERS", 32_768, min_value=100)
MODELGATE_COLLECTION_MAX_METADATA_BYTES = env_int("MODELGATE_COLLECTION_MAX_METADATA_BYTES", 8192, min_value=64)
# Wider vectors are stored and searched exactly; pgvector indexes at most 2,000 dimensions.
MODELGATE_COLLECTION_MAX_DIMENSION = env_int("MODELGATE_COLLECTION_MAX_DIMENSION", 2000, min_value=1, max_value=16_000)
# Search records are written by a per-process background writer after the response (core.telemetry).
MODELGATE_TELEMETRY_BACKGROUND = env_bool("MODELGATE_TELEMETRY_BACKGROUND", True)
# How long a process trusts a collection it found for a search (each search still checks it exists).
MODELGATE_COLLECTION_CACHE_SECONDS = env_int("MODELGATE_COLLECTION_CACHE_SECONDS", 2, min_value=0, max_value=60)
# hnsw.ef_search of a search that does not set its own (pgvector's default): the recall/latency trade-off.
MODELGATE_SEARCH_EF_SEARCH = env_int("MODELGATE_SEARCH_EF_SEARCH", 40, min_value=1, max_value=1000)
MODELGATE_INGEST_CHUNK_DOCUMENTS = env_int("MODELGATE_INGEST_CHUNK_DOCUMENTS", 128, min_value=1, max_value=10_000)

# --- Serving (`make run`) -------------------------------------------------------------------
MODELGATE_BIND = env_str("MODELGATE_BIND", "127.0.0.1:8000")
if not re.match(r"^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$", MODELGATE_BIND):
    raise ImproperlyConfigured(f"MODELGATE_BIND must be host:port; got {MODELGATE_BIND!r}.")
# Web workers hold no models (the model server does): one per core by default.
MODELGATE_WEB_WORKERS = env_int("MODELGATE_WEB_WORKERS", os.cpu_count() or 1, min_value=1, max_value=64)
# Threads of one worker share its model pool, which is what lets concurrent requests batch.
MODELGATE_WEB_THREADS = env_int("MODELGATE_WEB_THREADS", 8, min_value=1, max_value=256)

# --- Metrics (GET /metrics, Prometheus) -----------------------------------------------------
# A scrape needs the bearer token when one is set, and to come from an allowed network when some are
# listed (both when both are set); with neither, /metrics does not exist (404). Series name tenants.
MODELGATE_METRICS_TOKEN = env_str("MODELGATE_METRICS_TOKEN") or None
if MODELGATE_METRICS_TOKEN is not None and (len(MODELGATE_METRICS_TOKEN) < 16 or any(c.isspace() for c in MODELGATE_METRICS_TOKEN)):
    raise ImproperlyConfigured("MODELGATE_METRICS_TOKEN must be at least 16 characters without spaces "
                               "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))').")
MODELGATE_METRICS_ALLOW = []
for _network in env_list("MODELGATE_METRICS_ALLOW", []):
    try:
        MODELGATE_METRICS_ALLOW.append(ipaddress.ip_network(_network, strict=False))
    except ValueError:
        raise ImproperlyConfigured(f"MODELGATE_METRICS_ALLOW items are addresses or networks (10.0.0.0/8, ::1); "
                                   f"got {_network!r}.") from None

# --- Limits ---------------------------------------------------------------------------------
MODELGATE_MAX_REQUEST_BYTES = env_int(
    "MODELGATE_MAX_REQUEST_BYTES", 25 * 1024 * 1024, min_value=1024, max_value=1024**3
)
DATA_UPLOAD_MAX_MEMORY_SIZE = MODELGATE_MAX_REQUEST_BYTES
# How deep a JSON body may nest (objects and arrays): deeper is a 400 (core.parsers), never a RecursionError.
MODELGATE_MAX_JSON_DEPTH = env_int("MODELGATE_MAX_JSON_DEPTH", 32, min_value=2, max_value=200)
# The longest URL (path and query string, as sent) answered; longer is a 414 in the error shape. gunicorn
# reads request lines of up to 8,190 bytes (config/gunicorn_conf.py): the limit stays below that.
MODELGATE_MAX_URL_BYTES = env_int("MODELGATE_MAX_URL_BYTES", 8000, min_value=256, max_value=8000)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Keys touch last_used_at at most this often, so that a busy key costs no write per request.
MODELGATE_KEY_LAST_USED_RESOLUTION = 60
# How long a process trusts a key it has verified: revoking a key or suspending a tenant takes this long to reach
# every process, and a busy key costs no query in between.
MODELGATE_KEY_CACHE_SECONDS = env_int("MODELGATE_KEY_CACHE_SECONDS", 2, min_value=0, max_value=60)

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.authentication.TenantScopePermission"],
    "DEFAULT_THROTTLE_CLASSES": ["billing.ratelimits.RequestRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.JSONParser",
        "core.parsers.MultiPartParser",
        "core.parsers.FormParser",
    ],
    # drf-spectacular's, plus every error status an operation can answer (platform/tenants/openapi.py).
    "DEFAULT_SCHEMA_CLASS": "tenants.openapi.ModelgateAutoSchema",
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Modelgate API",
    "DESCRIPTION": (
        "Multi-tenant inference gateway: local open models first, premium APIs when needed. Every answer that is "
        "not a success has one shape, {\"error\": {\"code\", \"message\", \"request_id\"}} (the Error component), "
        "and each operation lists the statuses it can answer. Strings are UTF-8 text without NUL characters (U+0000)."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": r"/v1",
    "ENUM_NAME_OVERRIDES": {"AlertDeliveryEnum": "billing.models.Alert.Delivery", "LanguageEnum": "inference.languages.NLLB_CODES"},
    # Request bodies described as the serializers read them: uploads as binary, non-blank strings with minLength.
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env_str(
    "MODELGATE_LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.logs.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        }
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Requests are logged once by our access log middleware, with tenant and latency.
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
        "pgserver": {"level": "WARNING"},
    },
}
