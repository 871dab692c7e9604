"""`manage.py modelserver`: the machine's model server — one process holding the model pool for every web
worker (or a model host without web workers, such as a GPU machine joining CPU web nodes)."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.memory import fix_mmap_threshold, limit_arenas
from inference.pool import ModelPool
from inference.server import ModelServer


class Command(BaseCommand):
    help = "Serve the model pool on a unix socket (default) or on TCP (with MODELGATE_MODEL_SERVER_SECRET)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--address", default=f"unix://{settings.MODELGATE_MODEL_SERVER_SOCKET}",
                            help="unix:///path/to.sock or tcp://host:port (default: %(default)s)")
        parser.add_argument("--memory-mb", type=int, default=settings.MODELGATE_MODEL_MEMORY_MB)

    def handle(self, *args: Any, address: str, memory_mb: int, **options: Any) -> None:
        # First, before the models' threads allocate: arenas made before the cap would stay.
        heap = {"arena_max": limit_arenas(settings.MODELGATE_MODEL_MALLOC_ARENA_MAX),
                "mmap_threshold_kb": fix_mmap_threshold(settings.MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB)}
        pool = ModelPool(memory_budget_mb=memory_mb, batching=settings.MODELGATE_BATCHING)
        try:
            server = ModelServer(pool, address=address, secret=settings.MODELGATE_MODEL_SERVER_SECRET,
                                 trim_seconds=settings.MODELGATE_MODEL_TRIM_SECONDS, heap=heap)
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from None
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, frame: stop.set())
        thread = server.start()
        self.stdout.write(f"Model server listening on {server.bound} (pid {os.getpid()})", ending="\n")
        self.stdout.flush()
        try:
            while not stop.wait(0.5) and thread.is_alive():
                pass
        finally:
            server.shutdown()
            pool.shutdown()
