"""Operator screens for the model registry: status, memory, latency; pulls from the hub, update checks, load,
unload, health checks and benchmarks run as background jobs whose pages show their progress and outcome."""
from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from registry import services
from registry.models import BACKEND_CHOICES, TASK_CHOICES, ModelOperation, ModelSpec


def _start(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec], kind: str,
           params: dict | None = None) -> None:
    """One operation per model, run by the task cluster; the message links each one's page (progress, result)."""
    for spec in queryset:
        operation = services.start_operation(kind=kind, spec=spec, params=params, requested_by=request.user.get_username())
        url = reverse("admin:registry_modeloperation_change", args=[operation.pk])
        modeladmin.message_user(request, format_html('{}: <a href="{}">{}</a> started.', spec.slug, url, operation.get_kind_display()),
                                messages.INFO)


def _local(queryset: QuerySet[ModelSpec]) -> QuerySet[ModelSpec]:
    return queryset.exclude(source_kind=ModelSpec.SourceKind.PROVIDER)


@admin.action(description="Load on the model servers (a background job)")
def load_models(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    _start(modeladmin, request, _local(queryset), ModelOperation.Kind.LOAD)


@admin.action(description="Unload from the model servers (a background job)")
def unload_models(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    _start(modeladmin, request, _local(queryset), ModelOperation.Kind.UNLOAD)


@admin.action(description="Run a health check: one tiny real inference (a background job)")
def check_health(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    _start(modeladmin, request, _local(queryset), ModelOperation.Kind.HEALTH)


@admin.action(description="Check the hub for a newer revision (a background job)")
def check_updates(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    _start(modeladmin, request, queryset.filter(source_kind=ModelSpec.SourceKind.HUB), ModelOperation.Kind.CHECK_UPDATES)


@admin.action(description="Benchmark: latency and batched throughput (a background job)")
def benchmark_models(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ModelSpec]) -> None:
    _start(modeladmin, request, _local(queryset), ModelOperation.Kind.BENCHMARK, {"requests": 32})


_pool_snapshot: ContextVar[dict[str, Any] | None] = ContextVar("pool_snapshot", default=None)


def _read_pool() -> dict[str, Any]:
    """Every model's statistics from the model servers (or this process's pool); none when they do not answer."""
    from inference.errors import InferenceError

    try:
        return services.get_pool().stats()
    except InferenceError:
        return {}


def _pool_stats(slug: str) -> dict[str, Any]:
    snapshot = _pool_snapshot.get()
    if snapshot is not None:
        return snapshot.get(slug) or {"loaded": False}
    return services.get_pool().stats(slug)


@admin.register(ModelSpec)
class ModelSpecAdmin(admin.ModelAdmin):
    list_display = [
        "slug", "task", "backend", "tier", "enabled", "preload", "status", "memory", "latency", "update",
    ]
    list_filter = ["task", "tier", "enabled", "backend", "source_kind", "last_check_ok"]
    search_fields = ["slug", "display_name", "source"]
    actions = [load_models, unload_models, check_health, check_updates, benchmark_models]
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
        if _pool_stats(spec.slug).get("loaded"):
            return "loaded"
        if spec.last_check_ok is False:
            return format_html('<span title="{}" style="color:#ba2121">error</span>', spec.last_error)
        return "not loaded"

    @admin.display(description="memory MB")
    def memory(self, spec: ModelSpec) -> str:
        return f"{spec.memory_mb:.0f}" if spec.memory_mb else "–"

    @admin.display(description="p50 / p95 ms")
    def latency(self, spec: ModelSpec) -> str:
        stats = _pool_stats(spec.slug)
        if stats.get("compute_ms_p50") is None:
            return f"{spec.last_check_latency_ms:.0f} (check)" if spec.last_check_latency_ms else "–"
        return f"{stats['compute_ms_p50']:.1f} / {stats['compute_ms_p95']:.1f}"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # One question to the model servers for the whole list (every model's statistics), not two per row.
        token = _pool_snapshot.set(_read_pool())
        try:
            response = super().changelist_view(request, extra_context)
            if isinstance(response, TemplateResponse):
                response.render()  # the columns are drawn while the snapshot is set
            return response
        finally:
            _pool_snapshot.reset(token)

    @admin.display(description="update")
    def update(self, spec: ModelSpec) -> str:
        return f"available: {spec.update_available_sha[:10]}" if spec.update_available_sha else ""

    @admin.display(description="in the model pool (the model servers, or this process without them)")
    def pool_stats(self, spec: ModelSpec) -> str:
        stats = services.get_pool().stats(spec.slug)
        return ", ".join(f"{key}={value}" for key, value in stats.items() if value is not None)


# --- operations -----------------------------------------------------------------------------------
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


class PullForm(forms.Form):
    repo_id = forms.CharField(max_length=200, label="Hub repository", help_text="owner/name, e.g. facebook/nllb-200-distilled-600M")
    revision = forms.CharField(max_length=100, initial="main", help_text="A branch, a tag or a commit sha; the commit it "
                               "points to now is what gets pinned.")
    slug = forms.SlugField(max_length=100, required=False, help_text="Empty: from the repository's name.")
    convert = forms.ChoiceField(choices=[("", "No conversion"), ("ct2", "Convert to CTranslate2")], required=False)
    quantization = forms.ChoiceField(choices=[(q, q) for q in ("int8", "int8_float16", "float16", "float32")], initial="int8")
    task = forms.ChoiceField(choices=[("", "Detect"), *TASK_CHOICES], required=False)
    backend = forms.ChoiceField(choices=[("", "Detect"), *BACKEND_CHOICES], required=False)

    def clean_repo_id(self) -> str:
        repo_id = self.cleaned_data["repo_id"].strip()
        if not REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
            raise forms.ValidationError("A hub repository is owner/name: letters, digits, '.', '-' and '_'.")
        return repo_id

    def clean_revision(self) -> str:
        revision = self.cleaned_data["revision"].strip()
        if not REVISION.match(revision) or ".." in revision:
            raise forms.ValidationError("A branch, tag or commit sha: letters, digits, '.', '-', '_' and '/'.")
        return revision


@admin.register(ModelOperation)
class ModelOperationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "subject", "status", "progress_bar", "step", "requested_by", "finished_at"]
    list_filter = ["kind", "status"]
    list_select_related = ["spec"]
    search_fields = ["spec__slug", "requested_by"]
    readonly_fields = ["kind", "spec", "params", "status", "progress_bar", "step", "outcome", "requested_by", "created_at",
                       "started_at", "finished_at"]
    exclude = ["result", "error", "progress"]
    change_form_template = "admin/registry/modeloperation/change_form.html"
    change_list_template = "admin/registry/modeloperation/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # operations are started by the actions and the pull form

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # who did what to which model, and what came of it: kept

    @admin.display(description="model")
    def subject(self, operation: ModelOperation) -> str:
        return operation.spec.slug if operation.spec_id else operation.params.get("repo_id", "–")

    @admin.display(description="progress")
    def progress_bar(self, operation: ModelOperation) -> str:
        return format_html('<progress max="100" value="{}"></progress> {}%', round(operation.progress * 100),
                           round(operation.progress * 100))

    @admin.display(description="outcome")
    def outcome(self, operation: ModelOperation) -> str:
        if operation.status == ModelOperation.Status.FAILED:
            return format_html('<p class="errornote">{}</p>', operation.error)
        if operation.result is None:
            return "–"
        return format_html("<dl>{}</dl>", format_html_rows(operation.result))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("pull/", view(self.pull_view), name="registry_modeloperation_pull"),
            path("<int:operation_id>/progress/", view(self.progress_view), name="registry_modeloperation_progress"),
            *super().get_urls(),
        ]

    def progress_view(self, request: HttpRequest, operation_id: int) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        operation = get_object_or_404(ModelOperation, pk=operation_id)
        return JsonResponse({
            "status": operation.status, "status_display": operation.get_status_display(), "progress": operation.progress,
            "step": operation.step, "finished": operation.finished, "result": operation.result, "error": operation.error,
        })

    def pull_view(self, request: HttpRequest) -> HttpResponse:
        """Pull a model from the hub (a background job): pinned to the commit the revision points to now,
        converted if asked, its task and backend detected, registered."""
        if not request.user.has_perm("registry.add_modelspec"):
            raise PermissionDenied
        form = PullForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            operation = services.start_operation(kind=ModelOperation.Kind.PULL, params=form.cleaned_data,
                                                 requested_by=request.user.get_username())
            return HttpResponseRedirect(reverse("admin:registry_modeloperation_change", args=[operation.pk]))
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "title": "Pull a model from the hub",
                   "form": form}
        return TemplateResponse(request, "admin/registry/modeloperation/pull.html", context)


def format_html_rows(result: Any) -> str:
    """A result's fields as a definition list (nested values as compact text)."""
    if not isinstance(result, dict):
        return format_html("<dd>{}</dd>", result)
    from django.utils.html import format_html_join

    return format_html_join("", "<dt>{}</dt><dd>{}</dd>", ((key, _plain(value)) for key, value in result.items()))


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list):
        return "; ".join(_plain(v) for v in value)
    return str(value)
