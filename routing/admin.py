"""Operator screens: routing policies, and every inference with its route, cost and outcome."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from routing.models import InferenceRecord, ProviderCredential, RoutingPolicy


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(admin.ModelAdmin):
    list_display = ["task", "tenant", "candidate_chain", "complexity_threshold", "confidence_floor",
                    "on_budget_exhausted", "cache_enabled", "auto_tune", "locked", "updated_at"]
    list_filter = ["task", "auto_tune", "locked", "cache_enabled", ("tenant", admin.EmptyFieldListFilter)]
    search_fields = ["tenant__slug", "task"]
    autocomplete_fields = ["tenant"]

    @admin.display(description="candidates")
    def candidate_chain(self, policy: RoutingPolicy) -> str:
        return " → ".join(policy.candidates) or "(default: local first)"


@admin.register(InferenceRecord)
class InferenceRecordAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "task", "model_slug", "tier", "status", "latency_ms", "cost",
                    "confidence", "cached", "feedback_score"]
    list_filter = ["status", "task", "tier", "cached", "model_slug", "tenant", "created_at"]
    search_fields = ["=request_id", "=id", "model_slug", "tenant__slug", "input_preview"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    show_full_result_count = False  # counting millions of rows on every page is the slow part
    readonly_fields = [field.name for field in InferenceRecord._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceRecord]:
        return super().get_queryset(request).defer("input_text")


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
