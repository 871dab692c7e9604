"""`manage.py embeddings collections|indexes|build-index|build-missing`."""
from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from embeddings import indexes
from embeddings.models import MAX_INDEXED_DIMENSION, Collection, Distance


class Command(BaseCommand):
    help = "Collections and their vector indexes."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("collections", help="Collections with their document counts and index status.")
        listing.add_argument("--tenant", help="Only this tenant's (slug).")
        actions.add_parser("indexes", help="Every vector index collections need, with its status.")
        build = actions.add_parser("build-index", help="Build one index now, concurrently (writers and searches go on).")
        build.add_argument("dimension", type=int)
        build.add_argument("--distance", choices=Distance.values, default=Distance.COSINE.value)
        build.add_argument("--maintenance-work-mem", default=None,
                           help="e.g. 2GB: memory for this build; HNSW builds much faster when the graph fits.")
        missing = actions.add_parser("build-missing", help="Build every missing or invalid index, one after another.")
        missing.add_argument("--maintenance-work-mem", default=None)

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "collections":
            self._collections(options.get("tenant"))
        elif action == "indexes":
            states = indexes.index_states()
            for dimension, distance in indexes.needed_indexes():
                state = indexes.state_of(dimension, distance, states)
                size = f"{state.size_bytes / 2**20:,.1f} MB" if state.size_bytes is not None else "-"
                self.stdout.write(f"{dimension:>6} {distance:<14} {state.status:<10} {size:>12}  {state.name}")
        elif action == "build-index":
            if options["dimension"] > MAX_INDEXED_DIMENSION:
                raise CommandError(f"pgvector indexes at most {MAX_INDEXED_DIMENSION} dimensions; wider vectors are searched exactly.")
            self._build(options["dimension"], options["distance"], options["maintenance_work_mem"])
        else:
            states = indexes.index_states()
            todo = [pair for pair in indexes.needed_indexes()
                    if indexes.state_of(*pair, states).status in (indexes.MISSING, indexes.INVALID)]
            if not todo:
                self.stdout.write("Every index collections need is there.")
            for dimension, distance in todo:
                self._build(dimension, distance, options["maintenance_work_mem"])

    def _collections(self, tenant: str | None) -> None:
        states = indexes.index_states()
        collections = Collection.objects.select_related("tenant", "model").order_by("tenant__slug", "name")
        if tenant:
            collections = collections.filter(tenant__slug=tenant)
        for c in collections:
            status = indexes.state_of(c.dimension, c.distance, states).status
            model = c.model.slug if c.model else "(own vectors)"
            self.stdout.write(f"{c.tenant.slug:<20} {c.name:<30} {c.document_count:>10,} docs  {c.dimension:>5}d {c.distance:<14} "
                              f"{model:<20} index {status}")

    def _build(self, dimension: int, distance: str, memory: str | None) -> None:
        if memory:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [memory])
        self.stdout.write(f"Building the {dimension}-dimension {distance} index (concurrently)…")
        started = time.monotonic()
        status = indexes.build_index(dimension, distance)
        if status == indexes.BUILDING:
            raise CommandError("Another process is building this index right now.")
        self.stdout.write(self.style.SUCCESS(f"{indexes.state_of(dimension, distance).name}: {status} "
                                             f"({time.monotonic() - started:.1f} s)."))
