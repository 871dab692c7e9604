"""ModelSpec: every model the platform knows, local or premium, with its source, prices and health."""
from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from inference.backends import BACKENDS, backend_class
from inference.base import ModelConfig
from inference.payloads import Task

# Premium backends live in routing; they are named here so that a spec can describe them.
PROVIDER_BACKENDS = ("openai", "anthropic", "openai-compatible")
TASK_CHOICES = [(task, task.replace("_", " ")) for task in Task.ALL]
BACKEND_CHOICES = [(name, name) for name in [*BACKENDS, *PROVIDER_BACKENDS]]
PRICE = dict(max_digits=14, decimal_places=8, default=Decimal("0"), validators=[MinValueValidator(Decimal("0"))])


class UnsafeModelPath(ValidationError):
    pass


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (some model packages import badly)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValidationError(f"The package {name!r} is not installed.")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def model_roots() -> list[Path]:
    """Directories a model may be loaded from: the model cache and the operator's configured roots."""
    return [settings.MODELGATE_MODEL_CACHE.resolve(), *(Path(p).resolve() for p in settings.MODELGATE_MODEL_ROOTS)]


def check_model_path(path: Path, *, extra_roots: list[Path] = ()) -> Path:
    resolved = path.resolve()
    roots = [*model_roots(), *extra_roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise UnsafeModelPath(
            f"{resolved} is outside the model cache and the configured model roots "
            f"({', '.join(str(r) for r in roots)}); add its directory to MODELGATE_MODEL_ROOTS."
        )
    return resolved


class ModelSpec(models.Model):
    class SourceKind(models.TextChoices):
        HUB = "hub", "Hugging Face Hub"
        PATH = "path", "Local path"
        PACKAGE = "package", "Installed package"
        PROVIDER = "provider", "Provider API"

    class Tier(models.TextChoices):
        LOCAL = "local", "Local"
        STANDARD = "standard", "Standard API"
        PREMIUM = "premium", "Premium API"

    class Prepare(models.TextChoices):
        NONE = "", "Nothing: the source loads as it is"
        JOIN_PARTS = "join_parts", "Join weights split across packages"
        GGUF_TO_CTRANSLATE2 = "gguf_to_ct2", "GGUF → transformers → CTranslate2 int8"

    slug = models.SlugField(max_length=100, unique=True)
    display_name = models.CharField(max_length=200)
    task = models.CharField(max_length=32, choices=TASK_CHOICES)
    backend = models.CharField(max_length=64, choices=BACKEND_CHOICES)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.LOCAL)
    enabled = models.BooleanField(default=True)
    preload = models.BooleanField(default=False, help_text="Load at start (on the model servers that serve it).")
    model_servers = models.JSONField(
        default=list, blank=True,
        help_text="Placement: the model servers (addresses from MODELGATE_MODEL_SERVERS) that serve this model, in "
                  "the order tried; empty: all of them.",
    )

    source_kind = models.CharField(max_length=16, choices=SourceKind.choices)
    source = models.CharField(
        max_length=500,
        help_text="Hub repo id (org/name), a local path, package/relative/path, or the provider's model name.",
    )
    revision = models.CharField(max_length=100, blank=True, help_text="Hub revision asked for (branch, tag or sha).")
    hub_commit_sha = models.CharField(max_length=40, blank=True, help_text="The exact hub commit this model was pulled at.")
    prepare = models.CharField(
        max_length=32, choices=Prepare.choices, blank=True, default="", help_text="One-time work that makes local_path from the source."
    )
    local_path = models.CharField(
        max_length=500, blank=True, help_text="Prepared weights (pulled, converted or assembled) in the model cache."
    )
    options = models.JSONField(default=dict, blank=True)
    dependencies = models.JSONField(
        default=dict, blank=True, help_text='Other models this one calls, by role: {"embeddings": "minilm-l6"}.'
    )
    detected = models.JSONField(default=dict, blank=True, editable=False, help_text="What the files said this model is.")

    max_batch_size = models.PositiveIntegerField(default=16, validators=[MinValueValidator(1)])
    max_wait_ms = models.FloatField(default=5.0, validators=[MinValueValidator(0)])

    # Prices. Local models are priced by compute time; APIs by tokens, characters or audio.
    price_input_per_1k_tokens = models.DecimalField(**PRICE)
    price_output_per_1k_tokens = models.DecimalField(**PRICE)
    price_per_1k_characters = models.DecimalField(**PRICE)
    price_per_audio_minute = models.DecimalField(**PRICE)
    price_per_compute_second = models.DecimalField(**PRICE)

    # Health, written by load and health checks.
    last_check_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_check_ok = models.BooleanField(null=True, editable=False)
    last_check_latency_ms = models.FloatField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    load_seconds = models.FloatField(null=True, blank=True, editable=False)
    memory_mb = models.FloatField(null=True, blank=True, editable=False)

    # Hub updates are flagged, never applied silently.
    update_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    update_available_sha = models.CharField(max_length=40, blank=True, editable=False)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["task", "slug"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.slug

    @property
    def is_local(self) -> bool:
        return self.source_kind != self.SourceKind.PROVIDER

    # --- validation ------------------------------------------------------------------------
    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        is_provider_backend = self.backend in PROVIDER_BACKENDS
        if is_provider_backend != (self.source_kind == self.SourceKind.PROVIDER):
            errors.setdefault("source_kind", []).append("Provider backends take a provider source, and only they do.")
        if self.is_local and self.tier != self.Tier.LOCAL:
            errors.setdefault("tier", []).append("A model that runs here is in the local tier.")
        servers = self.model_servers or []
        if not isinstance(servers, list) or not all(isinstance(address, str) for address in servers):
            errors.setdefault("model_servers", []).append("A list of model server addresses.")
        elif unknown := [address for address in servers if address not in settings.MODELGATE_MODEL_SERVERS]:
            errors.setdefault("model_servers", []).append(
                f"Not in MODELGATE_MODEL_SERVERS: {', '.join(unknown)}." if settings.MODELGATE_MODEL_SERVERS
                else "MODELGATE_MODEL_SERVERS is empty here: this process holds its own models, so there is nothing to place.")
        if not self.is_local and self.tier == self.Tier.LOCAL:
            errors.setdefault("tier", []).append("A provider model is in the standard or premium tier.")
        if self.backend in BACKENDS:
            backend = backend_class(self.backend)
            if backend.task != self.task:
                errors.setdefault("backend", []).append(f"{self.backend} serves {backend.task}, not {self.task}.")
            errors.update(self._option_errors(backend.option_types))
        if not isinstance(self.dependencies, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in (self.dependencies or {}).items()
        ):
            errors.setdefault("dependencies", []).append('Use {"role": "model-slug"}.')
        elif self.slug in self.dependencies.values():
            errors.setdefault("dependencies", []).append("A model cannot depend on itself.")
        if self.prepare and not self.local_path:
            errors.setdefault("local_path", []).append("Prepared weights need a local_path to be written to.")
        if self.source_kind == self.SourceKind.PATH and self.source:
            try:
                check_model_path(Path(self.source))
            except UnsafeModelPath as exc:
                errors.setdefault("source", []).append(exc.messages[0])
        if self.source_kind == self.SourceKind.PACKAGE and self.source:
            try:
                package_dir(self.source.split("/")[0])
            except ValidationError as exc:
                errors.setdefault("source", []).append(exc.messages[0])
        if errors:
            raise ValidationError(errors)

    def _option_errors(self, option_types: dict[str, Any]) -> dict[str, list[str]]:
        if not isinstance(self.options, dict):
            return {"options": ["Options are a JSON object."]}
        problems = []
        for name, value in self.options.items():
            if name not in option_types:
                known = ", ".join(sorted(option_types)) or "none"
                problems.append(f"Unknown option {name!r} for {self.backend} (known: {known}).")
            elif isinstance(value, bool) and bool not in _as_tuple(option_types[name]):
                problems.append(f"Option {name!r} must be {_type_names(option_types[name])}, not a boolean.")
            elif not isinstance(value, option_types[name]):
                problems.append(f"Option {name!r} must be {_type_names(option_types[name])}.")
        return {"options": problems} if problems else {}

    # --- runtime ---------------------------------------------------------------------------
    def weights_path(self) -> Path:
        """Where the weights are on disk, checked to be inside an allowed root."""
        if self.local_path:
            return check_model_path(Path(self.local_path))
        if self.source_kind == self.SourceKind.PATH:
            return check_model_path(Path(self.source))
        if self.source_kind == self.SourceKind.PACKAGE:
            package, _, inner = self.source.partition("/")
            root = package_dir(package)
            return check_model_path(root / inner, extra_roots=[root])
        raise ValidationError(f"{self.slug} has no local weights yet: pull it first (manage.py models pull).")

    def to_config(self, *, _seen: tuple[str, ...] = ()) -> ModelConfig:
        """The inference library's view of this spec, dependencies included."""
        if self.slug in _seen:
            raise ValidationError(f"Model dependencies form a cycle: {' → '.join([*_seen, self.slug])}.")
        dependencies = {}
        if self.dependencies:
            found = {spec.slug: spec for spec in ModelSpec.objects.filter(slug__in=self.dependencies.values())}
            for role, slug in self.dependencies.items():
                if slug not in found:
                    raise ValidationError(f"{self.slug} depends on {slug!r} ({role}), which is not registered.")
                dependencies[role] = found[slug].to_config(_seen=(*_seen, self.slug))
        return ModelConfig(
            slug=self.slug,
            task=self.task,
            backend=self.backend,
            path=self.weights_path(),
            options=dict(self.options or {}),
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            dependencies=dependencies,
        )


class ModelOperation(models.Model):
    """Model work an operator started from the admin (pull, update check, load, unload, health check,
    benchmark), run by the task cluster: the row is what the page polls for progress, result or error."""

    class Kind(models.TextChoices):
        PULL = "pull", "Pull from the hub"
        CHECK_UPDATES = "check_updates", "Check for a newer revision"
        LOAD = "load", "Load"
        UNLOAD = "unload", "Unload"
        HEALTH = "health", "Health check"
        BENCHMARK = "benchmark", "Benchmark"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    spec = models.ForeignKey(ModelSpec, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations",
                             help_text="The model acted on (a pull: the model it registered).")
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0, help_text="0 to 1.")
    step = models.CharField(max_length=200, blank=True, help_text="What it is doing now, in words.")
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["spec", "-created_at"], name="modeloperation_spec_time")]

    def __str__(self) -> str:
        subject = self.spec.slug if self.spec_id else self.params.get("repo_id", "")
        return f"{self.get_kind_display()} {subject}".strip()

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_names(kind: type | tuple[type, ...]) -> str:
    names = {"dict": "an object", "list": "a list", "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in _as_tuple(kind))
