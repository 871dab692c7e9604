"""Operator screens: routing policies with their routing curve and floor decisions (lock, set, roll back),
every inference with its route, cost and outcome (a request's attempts as one trace, mark good or bad, CSV),
the operator dashboard, learned routers and quality signals."""
from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import cached_property
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from registry.models import ModelSpec
from routing import dashboard, tuning
from routing.models import InferenceRecord, LearnedRouter, ProviderCredential, QualitySignal, RoutingPolicy, ThresholdChange


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(admin.ModelAdmin):
    list_display = ["task", "tenant", "candidate_chain", "complexity_threshold", "confidence_floor", "quality_target",
                    "auto_tune", "locked", "router_in_use", "drift", "updated_at"]
    list_filter = ["task", "auto_tune", "locked", "cache_enabled", ("tenant", admin.EmptyFieldListFilter),
                   ("drift_flagged_at", admin.EmptyFieldListFilter)]
    search_fields = ["tenant__slug", "task"]
    autocomplete_fields = ["tenant"]
    list_select_related = ["tenant", "learned_router"]
    readonly_fields = ["routing_curve", "recent_decisions", "learned_router", "drift_flagged_at", "drift_detail"]
    actions = ["lock", "unlock", "tune_now"]
    fieldsets = [
        (None, {"fields": ["tenant", "task", "candidates", "complexity_threshold", "confidence_floor",
                           "on_budget_exhausted", "cache_enabled", "cache_ttl_seconds"]}),
        ("Self-tuning", {"fields": ["auto_tune", "locked", "quality_metric", "quality_target", "shadow_rate",
                                    "tune_window_days", "tune_min_samples", "tune_max_step", "tune_hysteresis",
                                    "learned_router", "drift_flagged_at", "drift_detail"]}),
        ("Evidence", {"fields": ["routing_curve", "recent_decisions"]}),
    ]

    @admin.display(description="candidates")
    def candidate_chain(self, policy: RoutingPolicy) -> str:
        return " → ".join(policy.candidates) or "(default: local first)"

    @admin.display(description="learned router")
    def router_in_use(self, policy: RoutingPolicy) -> str:
        return f"v{policy.learned_router.version}" if policy.learned_router_id else "confidence"

    @admin.display(description="drift", boolean=True)
    def drift(self, policy: RoutingPolicy) -> bool:
        return policy.drift_flagged_at is not None

    @admin.display(description="routing curve (this policy's tune window)")
    def routing_curve(self, policy: RoutingPolicy) -> str:
        if policy.pk is None:
            return "-"
        evaluation = tuning.evaluate(policy)
        if not evaluation.points:
            return f"No labelled records in the last {policy.tune_window_days} days yet."
        cpt = ", ".join(f"CPT({level:.0%}) {'-' if v is None else f'{v:.1%}'}" for level, v in evaluation.cpt.items())
        summary = format_html(
            "<p>{} labelled of {} local answers; APGR {}; {}.</p>", len(evaluation.window.items),
            evaluation.window.records, f"{evaluation.apgr:.3f}", cpt,
        )
        return summary + curve_svg(evaluation.points, current=evaluation.current)

    @admin.display(description="recent decisions")
    def recent_decisions(self, policy: RoutingPolicy) -> str:
        if policy.pk is None:
            return "-"
        changes = list(policy.threshold_changes.all()[:10])
        if not changes:
            return "None yet."
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td><a href=\"{}\">details</a></td></tr>",
            ((f"{c.created_at:%Y-%m-%d %H:%M}", c.get_decided_by_display(), f"{c.old:.3f}", f"{c.new:.3f}", c.reason,
              reverse("admin:routing_thresholdchange_change", args=[c.pk])) for c in changes),
        )
        return format_html("<table><tr><th>when</th><th>by</th><th>floor</th><th>why</th><th></th></tr>{}</table>", rows)

    def save_model(self, request: HttpRequest, obj: RoutingPolicy, form: forms.ModelForm, change: bool) -> None:
        # A floor set by hand is a decision like the tuner's: recorded, with who made it.
        floor = obj.confidence_floor
        if change and "confidence_floor" in form.changed_data:
            obj.confidence_floor = form.initial["confidence_floor"]
        super().save_model(request, obj, form, change)
        if change and "confidence_floor" in form.changed_data:
            tuning.set_floor(obj, floor, actor=request.user.get_username(), reason=f"Set by {request.user.get_username()} in the admin.")

    @admin.action(description="Lock: the tuner leaves their floors alone")
    def lock(self, request: HttpRequest, queryset: QuerySet[RoutingPolicy]) -> None:
        self._set_locked(request, queryset, True)

    @admin.action(description="Unlock")
    def unlock(self, request: HttpRequest, queryset: QuerySet[RoutingPolicy]) -> None:
        self._set_locked(request, queryset, False)

    def _set_locked(self, request: HttpRequest, queryset: QuerySet[RoutingPolicy], locked: bool) -> None:
        # save() per policy: the routing configuration cache of this process forgets it at once.
        for policy in queryset:
            policy.locked = locked
            policy.save(update_fields=["locked", "updated_at"])
        self.message_user(request, f"{queryset.count()} policies {'locked' if locked else 'unlocked'}.")

    @admin.action(description="Tune now")
    def tune_now(self, request: HttpRequest, queryset: QuerySet[RoutingPolicy]) -> None:
        for policy in queryset:
            change = tuning.tune(policy)
            verb = f"{change.old:.3f} → {change.new:.3f}" if change.changed else f"kept {change.new:.3f}"
            self.message_user(request, f"{policy}: {verb}. {change.reason}")


def curve_svg(points: list[Any], *, current: Any = None, width: int = 420, height: int = 240) -> str:
    """Premium share (x) against PGR and quality (y), the current floor marked: drawn here as SVG, so
    the page needs no script and no chart library."""
    pad = 36
    x = lambda share: pad + share * (width - 2 * pad)  # noqa: E731
    y = lambda value: height - pad - max(0.0, min(1.0, value)) * (height - 2 * pad)  # noqa: E731
    pgr = " ".join(f"{x(p.premium_share):.1f},{y(p.pgr):.1f}" for p in points)
    quality = " ".join(f"{x(p.premium_share):.1f},{y(p.quality):.1f}" for p in points)
    marker = ""
    if current is not None:
        marker = format_html(
            '<circle cx="{}" cy="{}" r="4" fill="#c0392b"><title>now: premium {}, PGR {}</title></circle>',
            f"{x(current.premium_share):.1f}", f"{y(current.pgr):.1f}", f"{current.premium_share:.1%}", f"{current.pgr:.3f}",
        )
    axes = format_html(
        '<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#888"/><line x1="{0}" y1="{3}" x2="{0}" y2="{1}" stroke="#888"/>'
        '<text x="{4}" y="{5}" font-size="11" text-anchor="middle">premium share</text>'
        '<text x="{0}" y="{6}" font-size="11">1.0</text><text x="{2}" y="{7}" font-size="11" text-anchor="end">100%</text>',
        pad, height - pad, width - pad, pad, width / 2, height - 8, pad - 6, height - pad + 14,
    )
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" role="img" aria-label="routing curve">{}'
        '<polyline points="{}" fill="none" stroke="#2c7fb8" stroke-width="2"><title>PGR</title></polyline>'
        '<polyline points="{}" fill="none" stroke="#7fbc41" stroke-width="2" stroke-dasharray="4 3"><title>quality</title></polyline>'
        '{}</svg><p><span style="color:#2c7fb8">━ PGR</span> <span style="color:#7fbc41">┅ quality</span> '
        '<span style="color:#c0392b">● the floor in force</span></p>',
        width, height, axes, pgr, quality, marker,
    )


@admin.register(ThresholdChange)
class ThresholdChangeAdmin(admin.ModelAdmin):
    list_display = ["created_at", "policy", "decided_by", "old", "new", "actor", "reason"]
    list_filter = ["decided_by", "policy__task"]
    list_select_related = ["policy__tenant"]
    search_fields = ["policy__tenant__slug", "reason"]
    readonly_fields = ["policy", "old", "new", "decided_by", "actor", "reason", "rolled_back_to", "created_at", "evidence_shown"]
    exclude = ["evidence"]
    actions = ["roll_back"]

    @admin.display(description="evidence")
    def evidence_shown(self, change: ThresholdChange) -> str:
        return format_html("<pre>{}</pre>", json.dumps(change.evidence, indent=2, sort_keys=True))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the history is the audit trail

    @admin.action(description="Roll back: return the policy to the floor before this decision")
    def roll_back(self, request: HttpRequest, queryset: QuerySet[ThresholdChange]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Choose one decision to roll back to before.", level=messages.ERROR)
            return
        target = queryset.select_related("policy").get()
        change = tuning.roll_back(target, actor=request.user.get_username())
        self.message_user(request, f"{target.policy}: {change.old:.3f} → {change.new:.3f}.")


@admin.register(LearnedRouter)
class LearnedRouterAdmin(admin.ModelAdmin):
    list_display = ["created_at", "policy", "version", "trained_on", "held_out", "apgr", "baseline_apgr", "accepted"]
    list_filter = ["accepted"]
    list_select_related = ["policy__tenant"]
    exclude = ["weights"]
    readonly_fields = ["policy", "version", "trained_on", "held_out", "apgr", "baseline_apgr", "accepted", "reason", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to COUNT_CAP rows (COUNT over a LIMITed subquery: an index range, never the whole
    table) and beyond that takes PostgreSQL's planner estimate: `COUNT(*)` of millions of records is the slow
    part of a changelist, and nobody pages to the ten-thousandth row (they filter)."""

    COUNT_CAP = 10_000

    @cached_property
    def count(self) -> int:
        rows = self.object_list.select_related(None).order_by()
        exact = rows[: self.COUNT_CAP + 1].count()
        if exact <= self.COUNT_CAP:
            return exact
        try:
            plan = json.loads(rows.explain(format="json"))
            estimate = int(plan[0]["Plan"]["Plan Rows"])
        except (ValueError, KeyError, IndexError, TypeError):
            estimate = 0
        return max(exact, estimate)


@admin.register(QualitySignal)
class QualitySignalAdmin(admin.ModelAdmin):
    list_display = ["created_at", "record", "source", "agreement", "teacher", "created_by"]
    list_filter = ["source"]
    list_select_related = ["record", "teacher"]
    raw_id_fields = ["record", "teacher"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator  # as many as the records they judge

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ModelSlugFilter(admin.SimpleListFilter):
    """Models from the registry: listing the distinct slugs of the records would read every record."""

    title = "model"
    parameter_name = "model_slug"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(slug, slug) for slug in ModelSpec.objects.order_by("slug").values_list("slug", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[InferenceRecord]) -> QuerySet[InferenceRecord]:
        return queryset.filter(model_slug=self.value()) if self.value() else queryset


class TierFilter(admin.SimpleListFilter):
    """The registry's tiers (listing the distinct tiers of the records would read every record)."""

    title = "tier"
    parameter_name = "tier"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(ModelSpec.Tier.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[InferenceRecord]) -> QuerySet[InferenceRecord]:
        return queryset.filter(tier=self.value()) if self.value() else queryset


EXPORT_MAX_ROWS = 100_000
REVIEW_MAX_RECORDS = 1000
EXPORT_COLUMNS = ["created_at", "id", "request_id", "tenant", "api_key", "task", "model", "tier", "status", "purpose",
                  "items", "unit", "units_in", "units_out", "queue_ms", "compute_ms", "latency_ms", "reserved_cost", "cost",
                  "complexity", "confidence", "score", "floor", "threshold", "escalation_cause", "items_escalated",
                  "escalated_from", "cached", "error_code", "feedback_score", "routing_reason", "input_preview",
                  "output_preview"]
EXPORT_VALUES = ["created_at", "id", "request_id", "tenant__slug", "api_key__prefix", "task", "model_slug", "tier", "status",
                 "purpose", "items", "unit", "units_in", "units_out", "queue_ms", "compute_ms", "latency_ms", "reserved_cost",
                 "cost", "complexity", "confidence", "score", "floor", "threshold", "escalation_cause", "items_escalated",
                 "escalated_from_id", "cached", "error_code", "feedback_score", "routing_reason", "input_preview",
                 "output_preview"]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> Any:
    """Tenants' text opens in spreadsheets: a leading = + - @ would run as a formula there."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if isinstance(value, Decimal):
        return f"{value:f}"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return "" if value is None else value


def records_csv(rows: QuerySet[InferenceRecord], filename: str) -> StreamingHttpResponse:
    """At most EXPORT_MAX_ROWS rows in the changelist's order, streamed in chunks (a header says when more matched)."""
    truncated = rows.select_related(None).order_by()[: EXPORT_MAX_ROWS + 1].count() > EXPORT_MAX_ROWS

    def lines() -> Iterator[str]:
        writer = csv.writer(_Echo())
        yield writer.writerow(EXPORT_COLUMNS)
        for values in rows.values_list(*EXPORT_VALUES)[:EXPORT_MAX_ROWS].iterator(chunk_size=2000):
            yield writer.writerow([_cell(value) for value in values])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    if truncated:
        response["X-Export-Truncated"] = str(EXPORT_MAX_ROWS)
    return response


@admin.register(InferenceRecord)
class InferenceRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "task", "model_slug", "tier", "status", "latency", "money",
                    "confidence", "escalation_cause", "cached", "feedback_score"]
    # Every filter is an index range or a short walk down the time index: no DISTINCT over the records.
    list_filter = ["status", "task", TierFilter, "purpose", "escalation_cause", "cached", ModelSlugFilter, "tenant", "created_at"]
    search_fields = ["request_id"]  # searched exactly, see get_search_results
    list_select_related = ["tenant"]
    show_full_result_count = False  # counting millions of rows on every page is the slow part
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice would read every record
    paginator = EstimatedCountPaginator
    change_form_template = "admin/routing/inferencerecord/change_form.html"
    change_list_template = "admin/routing/inferencerecord/change_list.html"
    readonly_fields = [*(field.name for field in InferenceRecord._meta.fields), "latency", "queue", "compute", "money",
                       "reserved"]
    fieldsets = [
        (None, {"fields": ["id", "request_id", "tenant", "api_key", "task", "purpose", "status", "created_at", "completed_at"]}),
        ("Route", {"fields": ["model", "model_slug", "tier", "policy", "floor", "threshold", "score", "confidence", "complexity",
                              "escalation_cause", "items", "items_escalated", "escalated_from", "cached", "routing_reason",
                              "features"]}),
        ("Cost and time", {"fields": ["reserved", "money", "latency", "queue", "compute", "unit", "units_in", "units_out"]}),
        ("Error", {"fields": ["error_code", "error_message"]}),
        ("Texts", {"fields": ["input_digest", "input_preview", "input_text", "output_preview"]}),
        ("Feedback", {"fields": ["feedback_score", "feedback_comment", "feedback_at"]}),
    ]
    actions = ["mark_good", "mark_bad", "export_selected_csv"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceRecord]:
        return super().get_queryset(request).defer("input_text")

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> InferenceRecord | None:
        # The page links the tenant, key, model, policy and the attempt before: one query for all of them.
        queryset = self.get_queryset(request).defer(None).select_related("tenant", "api_key", "model", "policy", "escalated_from")
        try:
            return queryset.get(pk=InferenceRecord._meta.pk.to_python(object_id))
        except (InferenceRecord.DoesNotExist, ValidationError, ValueError):
            return None

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[InferenceRecord],
                           search_term: str) -> tuple[QuerySet[InferenceRecord], bool]:
        """A record id, a request id or a model slug, matched exactly: each is an index lookup, where the
        admin's case-insensitive search would read every record."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(Q(request_id=term) | Q(model_slug=term)), False

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, record: InferenceRecord) -> str:
        return dashboard.format_ms(record.latency_ms)

    @admin.display(description="cost", ordering="cost")
    def money(self, record: InferenceRecord) -> str:
        return dashboard.format_money(record.cost)

    @admin.display(description="reserved")
    def reserved(self, record: InferenceRecord) -> str:
        return dashboard.format_money(record.reserved_cost)

    @admin.display(description="queue")
    def queue(self, record: InferenceRecord) -> str:
        return dashboard.format_ms(record.queue_ms)

    @admin.display(description="compute")
    def compute(self, record: InferenceRecord) -> str:
        return dashboard.format_ms(record.compute_ms)

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], add: bool = False, change: bool = False,
                           form_url: str = "", obj: InferenceRecord | None = None) -> TemplateResponse:
        if obj is not None:
            context["trace"] = dashboard.request_trace(obj)
            context["record"] = obj
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.action(description="Mark good (a quality signal for self-tuning)")
    def mark_good(self, request: HttpRequest, queryset: QuerySet[InferenceRecord]) -> None:
        self._review(request, queryset, 1.0)

    @admin.action(description="Mark bad (a quality signal for self-tuning)")
    def mark_bad(self, request: HttpRequest, queryset: QuerySet[InferenceRecord]) -> None:
        self._review(request, queryset, 0.0)

    @admin.action(description="Export the selected records as CSV")
    def export_selected_csv(self, request: HttpRequest, queryset: QuerySet[InferenceRecord]) -> StreamingHttpResponse:
        return records_csv(queryset.order_by("-created_at", "-pk"), "records-selected.csv")

    def _review(self, request: HttpRequest, queryset: QuerySet[InferenceRecord], agreement: float) -> None:
        # A verdict is a judgement of answers someone looked at: "select all" over millions is a mistake.
        if queryset.select_related(None).order_by()[: REVIEW_MAX_RECORDS + 1].count() > REVIEW_MAX_RECORDS:
            self.message_user(request, f"Mark at most {REVIEW_MAX_RECORDS:,} records at a time.", level=messages.ERROR)
            return
        operator = request.user.get_username()
        done = 0
        for record in queryset.select_related(None).only("pk"):
            QualitySignal.objects.update_or_create(
                record=record, source=QualitySignal.Source.OPERATOR,
                defaults={"agreement": agreement, "created_by": operator, "created_at": timezone.now()},
            )
            done += 1
        self.message_user(request, f"{done} records marked {'good' if agreement else 'bad'}.")

    # --- the export and the dashboard ------------------------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("export/", view(self.export_view), name="routing_inferencerecord_export"),
            path("dashboard/", view(self.dashboard_view), name="routing_dashboard"),
            *super().get_urls(),
        ]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The changelist as filtered (same query string), newest first, at most EXPORT_MAX_ROWS rows."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            rows = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:routing_inferencerecord_changelist") + "?e=1")
        return records_csv(rows, "records.csv")

    def dashboard_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        from billing.admin import UsageRangeForm

        from billing.usage import today

        # Without a query, the last 30 days, written into the form so the operator sees the range shown.
        end = today()
        form = UsageRangeForm(request.GET or {"start": (end - timedelta(days=29)).isoformat(), "end": end.isoformat()})
        context: dict[str, Any] = {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": "Dashboard", "form": form,
        }
        if form.is_valid():
            span = dashboard.Span(start=form.cleaned_data["start"], end=form.cleaned_data["end"], tenant=form.cleaned_data["tenant"])
            context.update(dashboard_context(span))
        return TemplateResponse(request, "admin/routing/dashboard.html", context)


def dashboard_context(span: dashboard.Span) -> dict[str, Any]:
    """Everything the dashboard shows, and the series its charts draw (handed to the page as JSON)."""
    buckets = dashboard.series(span)
    latency = dashboard.latency_by_model(span)
    policy_list = dashboard.policies(span)
    curves = dashboard.latest_curves(policy_list)
    changes = dashboard.threshold_changes(span, policy_list)
    now = timezone.now()
    timeline = _threshold_timeline(span, policy_list, changes, now=now)
    return {
        "span": span, "totals": dashboard.totals(span), "series": buckets, "latency": latency,
        "budgets": dashboard.budgets(span, now=now),
        "policies": [
            {"policy": policy, "curve": curves.get(policy.pk),
             "svg": curve_svg(curves[policy.pk]["points"], current=curves[policy.pk]["current"], width=360, height=210)
             if policy.pk in curves else ""}
            for policy in policy_list
        ],
        "threshold_changes": changes,
        "drift_alerts": dashboard.drift_alerts(span),
        "drifting_policies": [policy for policy in policy_list if policy.drift_flagged_at],
        "pool": dashboard.pool_state(),
        "chart_data": {
            "granularity": "hour" if span.hourly else "day",
            "currency": settings.MODELGATE_CURRENCY_SYMBOL,
            "labels": [bucket["label"] for bucket in buckets],
            "local_requests": [bucket["local_requests"] for bucket in buckets],
            "premium_requests": [bucket["premium_requests"] for bucket in buckets],
            "local_cost": [float(bucket["local_cost"]) for bucket in buckets],
            "premium_cost": [float(bucket["premium_cost"]) for bucket in buckets],
            "latency": {"models": [row["model_slug"] or "(none)" for row in latency],
                        "p50": [row["p50"] for row in latency], "p95": [row["p95"] for row in latency]},
            "thresholds": timeline,
        },
    }


def _threshold_timeline(span: dashboard.Span, policy_list: list[RoutingPolicy], changes: list[ThresholdChange], *,
                        now: Any) -> list[dict[str, Any]]:
    """Each policy's floor as a step line over the span: where it stood at the start, every decision, now."""
    by_policy: dict[int, list[ThresholdChange]] = {}
    for change in changes:
        by_policy.setdefault(change.policy_id, []).append(change)
    end = min(span.until, now)
    lines = []
    for policy in policy_list:
        decided = by_policy.get(policy.pk)
        if not decided:
            continue
        points = [{"x": span.since.timestamp() * 1000, "y": decided[0].old}]
        points += [{"x": change.created_at.timestamp() * 1000, "y": change.new} for change in decided]
        points.append({"x": end.timestamp() * 1000, "y": policy.confidence_floor if span.until > now else decided[-1].new})
        lines.append({"label": str(policy), "points": points})
    return lines


class ProviderCredentialForm(forms.ModelForm):
    base_url = forms.URLField(required=False, assume_scheme="https", help_text="Only for OpenAI-compatible servers (…/v1).")
    api_key = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False,
        help_text="Write-only: stored encrypted, never shown again. Leave empty to keep the current key.",
    )

    class Meta:
        model = ProviderCredential
        fields = ["tenant", "kind", "base_url"]

    def clean(self) -> dict:
        data = super().clean()
        if not self.instance.pk and not data.get("api_key"):
            self.add_error("api_key", "A new credential needs its API key.")
        return data


@admin.register(ProviderCredential)
class ProviderCredentialAdmin(admin.ModelAdmin):
    form = ProviderCredentialForm
    list_display = ["kind", "tenant", "base_url", "updated_at"]
    list_filter = ["kind", ("tenant", admin.EmptyFieldListFilter)]
    search_fields = ["tenant__slug", "base_url"]
    autocomplete_fields = ["tenant"]

    def save_model(self, request: HttpRequest, obj: ProviderCredential, form: forms.ModelForm, change: bool) -> None:
        if form.cleaned_data.get("api_key"):
            obj.set_api_key(form.cleaned_data["api_key"])
        super().save_model(request, obj, form, change)
