"""Operator screens for the model registry: status, memory, latency, and load/unload/health/update actions."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from registry import services
from registry.models import ModelSpec


def _report(modeladmin: admin.ModelAdmin, request: HttpRequest, spec: ModelSpec, result: services.CheckResult) -> None:
    level = messages.SUCCESS if result.ok else messages.ERROR
    modeladmin.message_user(request, f"{spec.slug}: {result.detail}", level)


@admin.action(description="Load into this web process")
def load_models(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    for spec in queryset.filter(source_kind__in=[k for k in ModelSpec.SourceKind.values if k != "provider"]):
        _report(modeladmin, request, spec, services.load_model(spec=spec))


@admin.action(description="Unload from this web process")
def unload_models(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    for spec in queryset:
        done = services.unload_model(spec=spec)
        modeladmin.message_user(request, f"{spec.slug}: {'unloaded' if done else 'was not loaded'}.", messages.INFO)


@admin.action(description="Run a health check (one tiny real inference)")
def check_health(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    for spec in queryset:
        _report(modeladmin, request, spec, services.health_check(spec=spec))


@admin.action(description="Check the hub for a newer revision")
def check_updates(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    for spec, status in services.check_for_updates(queryset.filter(source_kind=ModelSpec.SourceKind.HUB)):
        modeladmin.message_user(request, f"{spec.slug}: {status}", messages.INFO)


@admin.register(ModelSpec)
class ModelSpecAdmin(admin.ModelAdmin):
    list_display = [
        "slug", "task", "backend", "tier", "enabled", "preload", "status", "memory", "latency", "update",
    ]
    list_filter = ["task", "tier", "enabled", "backend", "source_kind", "last_check_ok"]
    search_fields = ["slug", "display_name", "source"]
    actions = [load_models, unload_models, check_health, check_updates]
    readonly_fields = [
        "pool_stats", "detected", "hub_commit_sha", "update_available_sha", "update_checked_at",
        "last_check_at", "last_check_ok", "last_check_latency_ms", "last_error", "load_seconds", "memory_mb",
        "created_at", "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["slug", "display_name", "task", "backend", "tier", "enabled", "preload", "model_servers"]}),
        ("Source", {"fields": ["source_kind", "source", "revision", "hub_commit_sha", "prepare", "local_path", "detected"]}),
        ("Behaviour", {"fields": ["options", "dependencies", "max_batch_size", "max_wait_ms"]}),
        ("Prices", {"fields": [
            "price_input_per_1k_tokens", "price_output_per_1k_tokens", "price_per_1k_characters",
            "price_per_audio_minute", "price_per_compute_second",
        ]}),
        ("Health", {"fields": [
            "pool_stats", "last_check_at", "last_check_ok", "last_check_latency_ms", "last_error", "load_seconds", "memory_mb",
        ]}),
        ("Updates", {"fields": ["update_available_sha", "update_checked_at"]}),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="status")
    def status(self, spec: ModelSpec) -> str:
        if not spec.is_local:
            return "provider"
        if services.get_pool().is_loaded(spec.slug):
            return "loaded"
        if spec.last_check_ok is False:
            return format_html('<span title="{}" style="color:#ba2121">error</span>', spec.last_error)
        return "not loaded"

    @admin.display(description="memory MB")
    def memory(self, spec: ModelSpec) -> str:
        return f"{spec.memory_mb:.0f}" if spec.memory_mb else "–"

    @admin.display(description="p50 / p95 ms")
    def latency(self, spec: ModelSpec) -> str:
        stats = services.get_pool().stats(spec.slug)
        if stats.get("compute_ms_p50") is None:
            return f"{spec.last_check_latency_ms:.0f} (check)" if spec.last_check_latency_ms else "–"
        return f"{stats['compute_ms_p50']:.1f} / {stats['compute_ms_p95']:.1f}"

    @admin.display(description="update")
    def update(self, spec: ModelSpec) -> str:
        return f"available: {spec.update_available_sha[:10]}" if spec.update_available_sha else ""

    @admin.display(description="in the model pool (the model servers, or this process without them)")
    def pool_stats(self, spec: ModelSpec) -> str:
        stats = services.get_pool().stats(spec.slug)
        return ", ".join(f"{key}={value}" for key, value in stats.items() if value is not None)
