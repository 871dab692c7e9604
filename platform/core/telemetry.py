"""Telemetry rows (search records) written after the response instead of before it.

`write(row)` hands the row to a per-process writer thread that gathers what arrives within a few
milliseconds into one multi-row INSERT on its own connection, whose commits do not wait for the WAL
flush. The request that made the row answers without waiting for any of that. Nothing is dropped
for lack of room: when the queue is full the caller writes its row itself. What is still queued
when the process exits is written on the way out (atexit); a process killed outright loses at most
the rows of its last few milliseconds. Money never goes this way: inference records and budget
statements are written in the request.

MODELGATE_TELEMETRY_BACKGROUND=false writes each row in its request (the test suite's default, whose
transactions another connection could not see).
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from typing import Any

from django.conf import settings

from core.db import insert_row_unflushed

logger = logging.getLogger(__name__)

QUEUE_ROWS = 10_000
BATCH_ROWS = 500
LINGER_SECONDS = 0.005
IDLE_SECONDS = 60.0  # an idle writer gives its connection back

_STOP = object()


class BackgroundWriter:
    def __init__(self, *, queue_rows: int = QUEUE_ROWS, batch_rows: int = BATCH_ROWS, linger: float = LINGER_SECONDS) -> None:
        self.queue_rows, self.batch_rows, self.linger = queue_rows, batch_rows, linger
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[Any] = queue.Queue(queue_rows)
        self._thread: threading.Thread | None = None
        self.written = self.failed = 0

    def submit(self, row: Any) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            insert_row_unflushed(row)  # back-pressure: this request pays, nothing is lost

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row submitted so far is written (or has failed); False on timeout."""
        if self._thread is None or self._pid != os.getpid():
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> bool:
        """Write what is queued, close the thread's connection and end the thread (the next row
        starts another)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            return True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid != os.getpid():  # a forked worker starts with its own queue and thread
                self._queue = queue.Queue(self.queue_rows)
                self._thread = None
            if self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="modelgate-telemetry", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        from django.db import close_old_connections, connection

        while True:
            try:
                batch, waiters, stop = self._gather()
            except queue.Empty:
                connection.close()  # idle: a connection for the next rows is opened when they come
                continue
            if batch:
                try:
                    self._write(batch)
                    self.written += len(batch)
                except Exception:
                    connection.close()
                    # One row the table refuses (its collection deleted meanwhile) must not cost the
                    # others theirs: write them one by one, and report only what still fails.
                    for row in batch:
                        try:
                            self._write([row])
                            self.written += 1
                        except Exception:
                            self.failed += 1
                            logger.exception("Lost a telemetry row (%s %s)", type(row).__name__, row.pk)
                            connection.close()
                close_old_connections()
            for waiter in waiters:
                waiter.set()
            if stop:
                connection.close()
                return

    def _gather(self) -> tuple[list[Any], list[threading.Event], bool]:
        """The next batch: what arrives within `linger` of its first row, up to `batch_rows`; a flush
        or a stop ends it early. Raises queue.Empty after IDLE_SECONDS without anything."""
        batch: list[Any] = []
        waiters: list[threading.Event] = []
        item = self._queue.get(timeout=IDLE_SECONDS)
        deadline = time.monotonic() + self.linger
        while True:
            if item is _STOP:
                return batch, waiters, True
            if isinstance(item, threading.Event):
                waiters.append(item)
                return batch, waiters, False  # a flush writes what came before it, now
            batch.append(item)
            if len(batch) >= self.batch_rows:
                return batch, waiters, False
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return batch, waiters, False

    @staticmethod
    def _write(rows: list[Any]) -> None:
        from django.db import connection, transaction

        by_model: dict[type, list[Any]] = defaultdict(list)
        for row in rows:
            by_model[type(row)].append(row)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit = off")
            for model, same in by_model.items():
                model.objects.bulk_create(same)


writer = BackgroundWriter()
atexit.register(writer.stop)


def write(row: Any) -> None:
    """Record a telemetry row: after the response by default, in the request when configured so."""
    if settings.MODELGATE_TELEMETRY_BACKGROUND:
        writer.submit(row)
    else:
        insert_row_unflushed(row)
