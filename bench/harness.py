"""Shared pieces of the benchmarks: Django set up on a throwaway database, timing, and result tables."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_database_name(names: list[str]) -> str:
    """The throwaway database of a run. A run of one benchmark gets its own (`bench_modelgate_store`), so that
    `make bench BENCH=store` and another benchmark can run side by side on one PostgreSQL server; a run of
    several shares `bench_modelgate`. MODELGATE_BENCH_DB_SUFFIX, when set, names the suffix instead."""
    suffix = os.environ.get("MODELGATE_BENCH_DB_SUFFIX") or (names[0] if len(names) == 1 else "")
    return "bench_modelgate" + (f"_{suffix}" if suffix else "")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[object]]
    notes: list[str] = field(default_factory=list)
    command: str = ""  # the command that reproduces the table: bench/run.py names it (`make bench BENCH=<name>`)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in self.rows]
        lines += [""] + [f"- {note}" for note in self.notes] + ([f"- Reproduce: `{self.command}`"] if self.command else []) + [""]
        return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    return str(value)


def setup_django() -> None:
    sys.path.insert(0, str(ROOT / "platform"))
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("MODELGATE_LOG_LEVEL", "WARNING")
    import django

    django.setup()


@contextlib.contextmanager
def bench_database(name: str) -> Iterator[None]:
    """A fresh, migrated database of its own (`name`), so that benchmarks never touch real data."""
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    settings.DATABASES["default"]["TEST"]["NAME"] = name
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield
    finally:
        from core import telemetry

        telemetry.writer.stop()  # its connection would keep the database from being dropped
        connection.creation.destroy_test_db(old_name, verbosity=0)
        teardown_test_environment()


def median_rate(action: Callable[[], object], *, count: int, rounds: int) -> tuple[float, float]:
    """Median operations per second over `rounds`, and the median latency of one operation in ms."""
    rates, latencies = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            action()
            latencies.append(time.perf_counter() - t0)
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates), statistics.median(latencies) * 1000


CORPUS_MODULES = [
    "os", "json", "re", "collections", "itertools", "functools", "typing", "pathlib", "subprocess", "threading",
    "asyncio", "email", "http.client", "urllib.request", "logging", "argparse", "datetime", "decimal", "statistics",
    "unittest", "inspect", "textwrap", "difflib", "csv", "sqlite3", "xml.etree.ElementTree", "zipfile", "tarfile",
    "shutil", "django.db.models", "django.http", "django.forms", "django.contrib.admin", "rest_framework.serializers",
]


def corpus(count: int, *, min_chars: int = 30, max_chars: int = 400) -> list[str]:
    """Real English sentences from the docstrings of installed packages (stdlib, Django, DRF)."""
    import importlib
    import inspect
    import re

    sentences: list[str] = []
    seen: set[str] = set()
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member) or ""
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if min_chars <= len(sentence) <= max_chars and sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
                    if len(sentences) >= count:
                        return sentences
    if len(sentences) < count:
        raise RuntimeError(f"The corpus has {len(sentences)} sentences, fewer than the {count} asked for.")
    return sentences
