"""Real processes for faults the test process cannot play: an embedded PostgreSQL of its own (pgserver's
binaries, its own data directory and socket, so that stopping it leaves the suite's server alone), and a
real Modelgate (gunicorn, as `manage.py serve` starts it) on loopback pointed at it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from tests.billing.servers import READY_TIMEOUT_SECONDS, Server
from tests.config.test_serve import ROOT, free_port

MANAGE_TIMEOUT_SECONDS = 300


class OwnPostgres:
    """An embedded PostgreSQL in a fresh data directory, with the Modelgate database migrated."""

    def __init__(self) -> None:
        import pgserver

        from config.db import EMBEDDED_DATABASE_NAME, _ensure_database

        # Under /tmp itself: when run as root, pgserver runs the server as its own user, which must reach the directory.
        self.root = Path(tempfile.mkdtemp(prefix="modelgate-faults-pg-"))
        self.root.chmod(0o755)
        self.pgdata = self.root / "pgdata"
        self.server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        info = self.server.get_postmaster_info()
        self.socket_dir, self.port = str(info.socket_dir), info.port
        _ensure_database(self.socket_dir, self.port, EMBEDDED_DATABASE_NAME)
        self.url = f"postgresql://postgres@{self.socket_dir.replace('/', '%2F')}:{self.port}/{EMBEDDED_DATABASE_NAME}"
        self.manage("migrate", "--no-input", "-v", "0")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "platform"), os.environ.get("PYTHONPATH")])),
            "DATABASE_URL": self.url,
            "SECRET_KEY": settings.SECRET_KEY,
            "MODELGATE_DATA_DIR": str(self.root / "data"),
            "MODELGATE_LOG_LEVEL": "WARNING",
            "MODELGATE_PREPARE_MODELS_ON_START": "0",
            "MODELGATE_ROUTING_CACHE_SECONDS": "0",
            **extra,
        }

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env(), capture_output=True,
                              text=True, timeout=MANAGE_TIMEOUT_SECONDS)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def python(self, code: str) -> Any:
        """Run `code` in Django against this database; it prints one JSON value, returned."""
        return json.loads(self.manage("shell", "-c", code).strip().splitlines()[-1])

    def stop(self) -> None:
        from config.db import _pg_ctl

        _pg_ctl(self.pgdata, "stop")

    def start(self) -> None:
        import pgserver

        from config.db import _running_as_root

        # The same socket directory as before: clients find the server where they left it.
        pgserver.pg_ctl(["-w", "-l", str(self.pgdata / "restarted.log"), "-o", f"-k {self.socket_dir} -p {self.port}", "start"],
                        pgdata=self.pgdata, user="pgserver" if _running_as_root() else None)

    def close(self) -> None:
        from config.db import stop_embedded

        try:
            stop_embedded(self.pgdata)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Modelgate(Server):
    """One gunicorn (one worker) serving `database`, environment `extra` on top of the usual."""

    def __init__(self, database: OwnPostgres, *, threads: int = 4, **extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = database.root / f"gunicorn-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "config.wsgi:application",
                 "--config", str(ROOT / "platform" / "config" / "gunicorn_conf.py"),
                 "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", str(threads)],
                cwd=ROOT, env=database.env(**extra), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.wait_ready(time.monotonic() + READY_TIMEOUT_SECONDS)

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def stop(self) -> None:
        self.terminate()
        self.reap()


SETUP = """
import json
from decimal import Decimal
from billing.models import Budget
from registry.models import ModelSpec
from routing.models import ProviderCredential
from tenants import services
tenant = services.create_tenant(slug="faults", name="Faults")
key, secret = services.issue_api_key(tenant=tenant, name="faults")
Budget.objects.create(tenant=tenant, limit=Decimal("100"))
credential = ProviderCredential(tenant=None, kind="openai", base_url=BASE_URL)
credential.set_api_key("sk-operator-key-for-tests")
credential.save()
ModelSpec.objects.create(
    slug="gpt-fake", display_name="gpt-fake", task="generation", backend="openai", source_kind="provider",
    source="gpt-fake-upstream", tier="premium",
    options={"base_url": BASE_URL, "timeout": 30, "max_retries": 0, "breaker_threshold": 1000},
    price_input_per_1k_tokens="1", price_output_per_1k_tokens="2")
print(json.dumps(secret))
"""


def set_up_tenant(database: OwnPostgres, provider_base_url: str) -> str:
    """Tenant `faults` with a budget and a premium chat model at the fake provider; returns its key."""
    return database.python(SETUP.replace("BASE_URL", json.dumps(provider_base_url)))


def reap_everything(database: OwnPostgres) -> int:
    """The reaper, as it runs once the request and stream deadlines of every pending record have passed."""
    return database.python(
        "import json\n"
        "from datetime import timedelta\n"
        "from django.utils import timezone\n"
        "from routing.models import InferenceRecord\n"
        "from routing.tasks import reap_abandoned\n"
        "InferenceRecord.objects.filter(status='pending').update(created_at=timezone.now() - timedelta(days=2))\n"
        "print(json.dumps(reap_abandoned()))\n"
    )


def records_and_budget(database: OwnPostgres) -> dict[str, Any]:
    return database.python(
        "import json\n"
        "from billing.models import Budget\n"
        "from routing.models import InferenceRecord\n"
        "rows = list(InferenceRecord.objects.values('request_id', 'status', 'error_code', 'cost', 'units_in', 'units_out', 'compute_ms'))\n"
        "budget = Budget.objects.get(tenant__slug='faults')\n"
        "print(json.dumps({'records': rows, 'spent': str(budget.spent), 'reserved': str(budget.reserved)}, default=str))\n"
    )
