"""Operator screens: routing policies with their routing curve and floor decisions (lock, set, roll back),
every inference with its route, cost and outcome (mark good or bad), learned routers and quality signals."""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from routing import tuning
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


@admin.register(QualitySignal)
class QualitySignalAdmin(admin.ModelAdmin):
    list_display = ["created_at", "record", "source", "agreement", "teacher", "created_by"]
    list_filter = ["source"]
    list_select_related = ["record", "teacher"]
    raw_id_fields = ["record", "teacher"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(InferenceRecord)
class InferenceRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "task", "model_slug", "tier", "status", "latency_ms", "cost",
                    "confidence", "escalation_cause", "cached", "feedback_score"]
    list_filter = ["status", "task", "tier", "purpose", "escalation_cause", "cached", "model_slug", "tenant", "created_at"]
    search_fields = ["=request_id", "=id", "model_slug", "tenant__slug", "input_preview"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    show_full_result_count = False  # counting millions of rows on every page is the slow part
    readonly_fields = [field.name for field in InferenceRecord._meta.fields]
    actions = ["mark_good", "mark_bad"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceRecord]:
        return super().get_queryset(request).defer("input_text")

    @admin.action(description="Mark good (a quality signal for self-tuning)")
    def mark_good(self, request: HttpRequest, queryset: QuerySet[InferenceRecord]) -> None:
        self._review(request, queryset, 1.0)

    @admin.action(description="Mark bad (a quality signal for self-tuning)")
    def mark_bad(self, request: HttpRequest, queryset: QuerySet[InferenceRecord]) -> None:
        self._review(request, queryset, 0.0)

    def _review(self, request: HttpRequest, queryset: QuerySet[InferenceRecord], agreement: float) -> None:
        operator = request.user.get_username()
        done = 0
        for record in queryset.select_related(None).only("pk"):
            QualitySignal.objects.update_or_create(
                record=record, source=QualitySignal.Source.OPERATOR,
                defaults={"agreement": agreement, "created_by": operator, "created_at": timezone.now()},
            )
            done += 1
        self.message_user(request, f"{done} records marked {'good' if agreement else 'bad'}.")


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
