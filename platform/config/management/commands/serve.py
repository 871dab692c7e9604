"""`make run`: migrate, bootstrap, then supervise the model server, the web server and the task cluster
until Ctrl-C.

The model server holds the machine's models for every web worker; when it dies (a model crashed or ran
out of memory) the web tier keeps answering (503 for local models) and the supervisor starts it again.
Stopping (Ctrl-C, SIGTERM or `make stop`) ends the children and, when it is the embedded one, the
database as well, so nothing keeps running in the background.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from config.db import stop_embedded
from core.metrics import fresh_multiproc_dir
from core.processes import alive

READY_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 40
MODELS_READY_SECONDS = 60
RESTART_BACKOFF_SECONDS = (1, 2, 4, 8, 16, 30)  # between restarts of a model server that keeps dying


def _pidfile() -> Path:
    return settings.DATA_DIR / "serve.pid"


def _running_supervisor() -> int | None:
    try:
        pid = int(_pidfile().read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid != os.getpid() and alive(pid) else None


class Command(BaseCommand):
    help = "Run Modelgate: migrations, first-run setup, the gunicorn web server and the django-q2 cluster."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=settings.MODELGATE_BIND)
        parser.add_argument("--workers", type=int, default=settings.MODELGATE_WEB_WORKERS)
        parser.add_argument("--threads", type=int, default=settings.MODELGATE_WEB_THREADS)
        parser.add_argument("--no-qcluster", action="store_true", help="Do not start the task cluster here.")
        parser.add_argument("--no-modelserver", action="store_true",
                            help="Do not start a model server here (MODELGATE_MODEL_SERVERS names the ones to use).")
        parser.add_argument("--stop", action="store_true", help="Stop a running `serve` and the embedded database.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["stop"]:
            self._stop()
            return
        other = _running_supervisor()
        if other:
            raise CommandError(f"Modelgate already runs here (pid {other}); `make stop` ends it.")

        self.stdout.write("Applying migrations…")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("createcachetable", verbosity=0)
        base_url = f"http://{options['bind']}"
        first_run = io.StringIO()
        call_command("bootstrap", base_url=base_url, stdout=first_run)
        connections.close_all()

        _pidfile().write_text(str(os.getpid()))
        self.metrics_dir = fresh_multiproc_dir(settings.DATA_DIR / "metrics")
        stopping: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda number, frame: stopping.append(number))
        models = None
        if not options["no_modelserver"] and not settings.MODELGATE_MODEL_SERVERS:
            models = f"unix://{settings.MODELGATE_MODEL_SERVER_SOCKET}"
        children: dict[str, subprocess.Popen[bytes]] = {}
        exit_code = 0
        try:
            if models:
                children["models"] = self._start_models(models)
                self._wait_models(models, children["models"], stopping)
            children.update(self._start_children(options, models=models))
            if self._wait_ready(base_url, children, stopping):
                self.stdout.write(self.style.SUCCESS(f"\nModelgate is ready at {base_url}/  (Ctrl-C stops it)"))
                self.stdout.write(first_run.getvalue())
            restarts = 0
            while not stopping:
                crashed = [name for name, proc in children.items() if proc.poll() is not None]
                if crashed == ["models"]:
                    # A model that crashes or runs out of memory takes down the model server, not the web
                    # tier: start it again (web workers answer 503 for local models meanwhile).
                    pause = RESTART_BACKOFF_SECONDS[min(restarts, len(RESTART_BACKOFF_SECONDS) - 1)]
                    self.stderr.write(f"The model server exited ({children['models'].returncode}); "
                                      f"restarting it in {pause}s.")
                    time.sleep(pause)
                    children["models"] = self._start_models(models)
                    restarts += 1
                    continue
                if crashed:
                    self.stderr.write(f"{', '.join(crashed)} exited unexpectedly; stopping everything.")
                    exit_code = 1
                    break
                if restarts and children.get("models") and self._models_answer(models):
                    restarts = 0  # up again: the next crash starts its backoff afresh
                time.sleep(0.5)
        finally:
            self._stop_children(children)
            if settings.DATABASE_CHOICE.embedded:
                connections.close_all()
                if stop_embedded(settings.PGDATA):
                    self.stdout.write("Stopped the embedded PostgreSQL.")
            _pidfile().unlink(missing_ok=True)
        if exit_code:
            sys.exit(exit_code)

    def _env(self, models: str | None) -> dict[str, str]:
        base = settings.BASE_DIR
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(base / "platform"), os.environ.get("PYTHONPATH")]))}
        if models:
            env["MODELGATE_MODEL_SERVERS"] = models  # the web workers and the task cluster use this machine's
        return env

    def _start_models(self, address: str) -> subprocess.Popen[bytes]:
        base = settings.BASE_DIR
        return subprocess.Popen([sys.executable, str(base / "manage.py"), "modelserver", "--address", address],
                                cwd=base, env=self._env(None), start_new_session=True)

    def _models_answer(self, address: str | None) -> bool:
        from registry.services import model_server_answers

        return model_server_answers(address)

    def _wait_models(self, address: str, proc: subprocess.Popen[bytes], stopping: list[int]) -> None:
        deadline = time.monotonic() + MODELS_READY_SECONDS
        while time.monotonic() < deadline and not stopping and proc.poll() is None:
            if self._models_answer(address):
                return
            time.sleep(0.2)
        if proc.poll() is not None:
            raise CommandError(f"The model server exited ({proc.returncode}) before it was ready; see its log above.")

    def _start_children(self, options: dict[str, Any], *, models: str | None) -> dict[str, subprocess.Popen[bytes]]:
        base = settings.BASE_DIR
        # Web workers and task workers count into files there, which /metrics sums (prometheus_client's
        # multiprocess mode); the model server is asked for its statistics instead.
        env = {**self._env(models), "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        # Own process groups: a terminal's Ctrl-C reaches only this supervisor, which stops them in order.
        popen = dict(cwd=base, env=env, start_new_session=True)
        children = {
            "web": subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "config.wsgi:application",
                    "--config", str(base / "platform" / "config" / "gunicorn_conf.py"),
                    "--bind", options["bind"],
                    "--workers", str(options["workers"]),
                    "--threads", str(options["threads"]),
                ],
                **popen,
            )
        }
        if not options["no_qcluster"]:
            children["tasks"] = subprocess.Popen([sys.executable, str(base / "manage.py"), "qcluster"], **popen)
        return children

    def _wait_ready(self, base_url: str, children: dict[str, subprocess.Popen[bytes]], stopping: list[int]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline and not stopping:
            if children["web"].poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{base_url}/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        if not stopping:
            self.stderr.write(f"The web server did not become ready within {READY_TIMEOUT_SECONDS}s; see its log above.")
        return False

    def _stop_children(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        # The web tier first, so that requests in flight still find their models; the model server last.
        self._stop_stage([(name, proc) for name, proc in children.items() if name != "models"])
        self._stop_stage([(name, proc) for name, proc in children.items() if name == "models"])

    def _stop_stage(self, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        for _, proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for name, proc in children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in {STOP_TIMEOUT_SECONDS}s; killing it.")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _stop(self) -> None:
        pid = _running_supervisor()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS + 20
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            self.stdout.write(f"Stopped Modelgate (pid {pid}).")
        if settings.DATABASE_CHOICE.embedded:
            connections.close_all()
            if stop_embedded(settings.PGDATA):
                self.stdout.write("Stopped the embedded PostgreSQL.")
