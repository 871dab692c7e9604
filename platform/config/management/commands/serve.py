"""`make run`: migrate, bootstrap, then supervise the web server and the task cluster until Ctrl-C.

Stopping (Ctrl-C, SIGTERM or `make stop`) ends the children and, when it is the embedded one,
the database as well, so nothing keeps running in the background.
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

READY_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 40


def _pidfile() -> Path:
    return settings.DATA_DIR / "serve.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_supervisor() -> int | None:
    try:
        pid = int(_pidfile().read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


class Command(BaseCommand):
    help = "Run Modelgate: migrations, first-run setup, the gunicorn web server and the django-q2 cluster."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=settings.MODELGATE_BIND)
        parser.add_argument("--workers", type=int, default=settings.MODELGATE_WEB_WORKERS)
        parser.add_argument("--threads", type=int, default=settings.MODELGATE_WEB_THREADS)
        parser.add_argument("--no-qcluster", action="store_true", help="Do not start the task cluster here.")
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
        stopping: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda number, frame: stopping.append(number))
        children = self._start_children(options)
        exit_code = 0
        try:
            if self._wait_ready(base_url, children, stopping):
                self.stdout.write(self.style.SUCCESS(f"\nModelgate is ready at {base_url}/  (Ctrl-C stops it)"))
                self.stdout.write(first_run.getvalue())
            while not stopping:
                crashed = [name for name, proc in children.items() if proc.poll() is not None]
                if crashed:
                    self.stderr.write(f"{', '.join(crashed)} exited unexpectedly; stopping everything.")
                    exit_code = 1
                    break
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

    def _start_children(self, options: dict[str, Any]) -> dict[str, subprocess.Popen[bytes]]:
        base = settings.BASE_DIR
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(base / "platform"), os.environ.get("PYTHONPATH")]))}
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
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for name, proc in children.items():
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
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            self.stdout.write(f"Stopped Modelgate (pid {pid}).")
        if settings.DATABASE_CHOICE.embedded:
            connections.close_all()
            if stop_embedded(settings.PGDATA):
                self.stdout.write("Stopped the embedded PostgreSQL.")
