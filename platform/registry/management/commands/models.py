"""`manage.py models list|load|unload|health|bench|pull|check-updates|discover|detect|register-starter`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from registry import services
from registry.models import ModelSpec


class Command(BaseCommand):
    help = "Manage the model registry."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="Registered models and their state.")
        listing.add_argument("--task")
        for name, text in [("load", "Load a model here (checks that it loads; records time and memory)."),
                           ("unload", "Unload a model from this process."),
                           ("health", "Run one tiny real inference and record the result.")]:
            sub = actions.add_parser(name, help=text)
            sub.add_argument("slugs", nargs="+")
        bench = actions.add_parser("bench", help="Latency and throughput of a model on its probe input.")
        bench.add_argument("slug")
        bench.add_argument("--requests", type=int, default=32)
        actions.add_parser("register-starter", help="Register the models that ship inside installed packages.")
        pull = actions.add_parser("pull", help="Download from the Hugging Face Hub (pinned revision) and register.")
        pull.add_argument("repo_id")
        pull.add_argument("--revision", default="main")
        pull.add_argument("--slug")
        pull.add_argument("--convert", choices=["ct2"], help="Convert to CTranslate2 after download.")
        pull.add_argument("--quantization", default="int8", choices=["int8", "int8_float16", "int16", "float16", "float32"])
        pull.add_argument("--task", help="Override the detected task.")
        pull.add_argument("--backend", help="Override the detected backend.")
        updates = actions.add_parser("check-updates", help="Compare pinned hub revisions with the hub's.")
        updates.add_argument("slugs", nargs="*")
        discover = actions.add_parser("discover", help="Search the hub.")
        discover.add_argument("query")
        discover.add_argument("--task")
        discover.add_argument("--limit", type=int, default=20)
        detect = actions.add_parser("detect", help="Say what the model files in a directory are.")
        detect.add_argument("path")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            getattr(self, "_" + action.replace("-", "_"))(**options)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None

    def _specs(self, slugs: list[str]) -> list[ModelSpec]:
        specs = {spec.slug: spec for spec in ModelSpec.objects.filter(slug__in=slugs)}
        missing = [slug for slug in slugs if slug not in specs]
        if missing:
            raise CommandError(f"Unknown models: {', '.join(missing)} (see manage.py models list).")
        return [specs[slug] for slug in slugs]

    def _list(self, *, task: str | None, **_: Any) -> None:
        specs = ModelSpec.objects.all()
        if task:
            specs = specs.filter(task=task)
        for spec in specs:
            health = {True: "ok", False: "error", None: "unchecked"}[spec.last_check_ok]
            state = "enabled" if spec.enabled else "disabled"
            line = f"{spec.slug:<28} {spec.task:<15} {spec.backend:<24} {spec.tier:<9} {state:<9} health={health}"
            if spec.last_check_latency_ms is not None:
                line += f" ({spec.last_check_latency_ms:.0f} ms)"
            if spec.update_available_sha:
                line += f" update={spec.update_available_sha[:10]}"
            self.stdout.write(line)
            if spec.last_check_ok is False and spec.last_error:
                self.stdout.write(f"    {spec.last_error.splitlines()[0][:200]}")
        if not ModelSpec.objects.filter(task="translation", enabled=True).exists():
            self.stdout.write(self.style.WARNING(f"translation: {services.TRANSLATION_HINT}"))

    def _load(self, *, slugs: list[str], **_: Any) -> None:
        self._run_checks(slugs, services.load_model)

    def _health(self, *, slugs: list[str], **_: Any) -> None:
        self._run_checks(slugs, services.health_check)

    def _run_checks(self, slugs: list[str], check: Any) -> None:
        failed = []
        for spec in self._specs(slugs):
            result = check(spec=spec)
            style = self.style.SUCCESS if result.ok else self.style.ERROR
            self.stdout.write(style(f"{spec.slug}: {result.detail}"))
            if not result.ok:
                failed.append(spec.slug)
        if failed:
            raise CommandError(f"Failed: {', '.join(failed)}")

    def _unload(self, *, slugs: list[str], **_: Any) -> None:
        for spec in self._specs(slugs):
            done = services.unload_model(spec=spec)
            self.stdout.write(f"{spec.slug}: {'unloaded' if done else 'was not loaded in this process'}")

    def _bench(self, *, slug: str, requests: int, **_: Any) -> None:
        if requests < 1:
            raise CommandError("--requests must be at least 1.")
        [spec] = self._specs([slug])
        result = services.bench_model(spec=spec, requests=requests)
        self.stdout.write(f"{spec.slug}: {requests} requests")
        self.stdout.write(f"  one at a time: p50 {result['sequential_p50_ms']:.2f} ms, {result['sequential_per_s']:.1f}/s")
        self.stdout.write(f"  all at once (batched): {result['batched_per_s']:.1f}/s")
        self.stdout.write(f"  pool: {json.dumps(result['stats'])}")

    def _register_starter(self, **_: Any) -> None:
        for slug, outcome in services.register_starter_pack():
            self.stdout.write(f"{slug:<28} {outcome}")
        self.stdout.write(self.style.WARNING(f"translation: {services.TRANSLATION_HINT}"))

    def _detect(self, *, path: str, **_: Any) -> None:
        from registry.detection import UndetectableModel, detect

        try:
            found = detect(Path(path))
        except UndetectableModel as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"task={found.task} backend={found.backend} options={json.dumps(found.options)}")
        for reason in found.reasons:
            self.stdout.write(f"  - {reason}")

    def _pull(self, *, repo_id: str, revision: str, slug: str | None, convert: str | None, quantization: str,
              task: str | None, backend: str | None, **_: Any) -> None:
        from registry import hub
        from registry.detection import UndetectableModel

        self.stdout.write(f"Pulling {repo_id}@{revision} …")
        try:
            result = services.pull_model(repo_id=repo_id, revision=revision, slug=slug, convert=convert,
                                         quantization=quantization, task=task, backend=backend)
        except (hub.HubError, UndetectableModel) as exc:
            raise CommandError(str(exc)) from None
        snapshot, spec = result.snapshot, result.spec
        source = "the local cache" if snapshot.from_cache else "the hub"
        self.stdout.write(f"{len(snapshot.files)} files, {snapshot.size_bytes / 2**20:.1f} MB from {source}, commit {snapshot.commit_sha}")
        self.stdout.write(f"Detected task={result.detection.task} backend={result.detection.backend}:")
        for reason in result.detection.reasons:
            self.stdout.write(f"  - {reason}")
        if (task and task != result.detection.task) or (backend and backend != result.detection.backend):
            self.stdout.write(self.style.WARNING(f"Overridden by the operator: task={spec.task} backend={spec.backend}"))
        verb = "Registered" if result.created else "Updated"
        self.stdout.write(self.style.SUCCESS(f"{verb} {spec.slug} ({spec.task}, {spec.backend}); check it with: manage.py models health {spec.slug}"))

    def _check_updates(self, *, slugs: list[str], **_: Any) -> None:
        specs = self._specs(slugs) if slugs else list(ModelSpec.objects.filter(source_kind=ModelSpec.SourceKind.HUB))
        if not specs:
            self.stdout.write("No models from the hub are registered.")
        for spec, status in services.check_for_updates(specs):
            self.stdout.write(f"{spec.slug:<28} {status}")

    def _discover(self, *, query: str, task: str | None, limit: int, **_: Any) -> None:
        from registry import hub

        try:
            found = hub.discover(query, task=task, limit=limit, token=services._hf_token())
        except hub.HubError as exc:
            raise CommandError(str(exc)) from None
        for model in found:
            self.stdout.write(f"{model.repo_id:<60} {model.pipeline_tag or '-':<30} downloads={model.downloads or 0}")
        if not found:
            self.stdout.write("Nothing found.")
