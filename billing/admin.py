"""Operator screens for billing: budgets with their usage bar and sub-limits, alerts, and daily usage with
CSV exports, usage over time and the most expensive models."""
from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet, Sum
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing.models import Alert, Budget, SpendLimit, UsageDaily, period_bounds
from billing.usage import MAX_RANGE_DAYS, daily_series, today, top_models, usage_rows
from registry.models import ModelSpec
from tenants.models import Tenant


# --- budgets ------------------------------------------------------------------------------------------
class SpendLimitForm(forms.ModelForm):
    class Meta:
        model = SpendLimit
        fields = ["api_key", "model_slug", "limit"]

    def clean(self) -> dict:
        data = super().clean()
        budget, key, slug, limit = data.get("budget"), data.get("api_key"), data.get("model_slug"), data.get("limit")
        if key is not None and budget is not None and key.tenant_id != budget.tenant_id:
            self.add_error("api_key", "This key belongs to another tenant.")
        if bool(key) == bool(slug):
            self.add_error(None, "Limit either one API key or one model.")
        elif slug and not ModelSpec.objects.filter(slug=slug).exists():
            self.add_error("model_slug", f"No model {slug!r} is registered.")
        if limit is not None and self.instance.pk and limit < self.instance.spent:
            self.add_error("limit", f"{self.instance.spent:f} is already spent this period; the limit cannot be lower.")
        return data


class SpendLimitFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        seen: set[tuple[str, object]] = set()
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or self._should_delete_form(form):
                continue
            subject = ("key", data["api_key"].pk) if data.get("api_key") else ("model", data.get("model_slug"))
            if subject in seen:
                raise forms.ValidationError("One sub-limit per key and per model.")
            seen.add(subject)


class SpendLimitInline(admin.TabularInline):
    model = SpendLimit
    form = SpendLimitForm
    formset = SpendLimitFormSet
    extra = 0
    fields = ["api_key", "model_slug", "limit", "spent", "reserved"]
    readonly_fields = ["spent", "reserved"]
    autocomplete_fields = ["api_key"]
    verbose_name = "sub-limit"


class BudgetForm(forms.ModelForm):
    class Meta:
        model = Budget
        fields = ["tenant", "limit", "period", "custom_days", "at_limit", "alert_thresholds", "alert_email"]

    def clean_limit(self) -> Decimal:
        limit = self.cleaned_data["limit"]
        if self.instance.pk and limit < self.instance.spent:
            raise forms.ValidationError(f"{self.instance.spent:f} is already spent this period; the limit cannot be lower.")
        return limit


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the system writes (alerts, usage rollups): operators read them, never edit them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetForm
    list_display = ["tenant", "period", "limit", "spent", "reserved", "usage", "at_limit", "period_end", "alert_email"]
    list_filter = ["period", "at_limit"]
    search_fields = ["tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]
    # The webhook is the tenant's to set (PATCH /v1/budget checks the URL and issues the signing secret);
    # an operator sees it and may remove it.
    readonly_fields = ["spent", "reserved", "usage", "period_start", "period_end", "updated_at", "webhook_url",
                       "webhook_signing", "usage_over_time"]
    inlines = [SpendLimitInline]
    actions = ["remove_webhooks"]
    fieldsets = [
        (None, {"fields": ["tenant", "limit", "period", "custom_days", "at_limit"]}),
        ("This period", {"fields": ["period_start", "period_end", "spent", "reserved", "usage", "usage_over_time"]}),
        ("Alerts", {"fields": ["alert_thresholds", "alert_email", "webhook_url", "webhook_signing"]}),
        (None, {"fields": ["updated_at"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Budget | None = None) -> list[str]:
        # Sub-limits name the tenant's keys: a budget stays with the tenant it was made for.
        return [*self.readonly_fields, "tenant"] if obj is not None else list(self.readonly_fields)

    @admin.display(description="used")
    def usage(self, budget: Budget) -> str:
        if budget.limit is None:
            return "-"
        share = float((budget.spent + budget.reserved) / budget.limit * 100) if budget.limit else 100.0
        return format_html('<progress max="100" value="{}"></progress> {}%', round(min(share, 100)), round(share, 1))

    @admin.display(description="webhook signing secret")
    def webhook_signing(self, budget: Budget) -> str:
        return "set (never shown)" if budget.webhook_secret else "not set"

    @admin.display(description="usage")
    def usage_over_time(self, budget: Budget) -> str:
        if not budget.tenant_id:
            return "-"
        url = reverse("admin:billing_usagedaily_over_time")
        return format_html('<a href="{}?tenant={}">Daily usage of {}</a>', url, budget.tenant.slug, budget.tenant.slug)

    @admin.action(description="Remove the alert webhook of the selected budgets", permissions=["change"])
    def remove_webhooks(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        removed = queryset.exclude(webhook_url="", webhook_secret="").update(
            webhook_url="", webhook_secret="", updated_at=timezone.now()
        )
        self.message_user(request, f"Removed {removed} webhook(s).")

    def save_model(self, request: HttpRequest, obj: Budget, form: forms.ModelForm, change: bool) -> None:
        if not change:
            return super().save_model(request, obj, form, change)
        # Requests move spent and reserved concurrently with conditional UPDATEs: writing back the values
        # this form loaded would undo them.
        fields = [*(name for name in form.cleaned_data if name != "tenant"), "updated_at"]
        if {"period", "custom_days"} & set(form.changed_data):
            # A new kind of period starts with the window holding today; what was spent counts toward it.
            obj.period_start, obj.period_end = period_bounds(obj.period, obj.custom_days, timezone.now())
            fields += ["period_start", "period_end"]
            self.message_user(
                request,
                f"The budget's period is now {obj.period}: this one runs from "
                f"{obj.period_start:%Y-%m-%d %H:%M} to {obj.period_end:%Y-%m-%d %H:%M} UTC, and what was spent so far "
                "counts toward it.",
            )
        obj.save(update_fields=fields)

    def save_formset(self, request: HttpRequest, form: forms.ModelForm, formset: BaseInlineFormSet, change: bool) -> None:
        if formset.model is not SpendLimit:
            return super().save_formset(request, form, formset, change)
        limits = formset.save(commit=False)
        for limit in formset.deleted_objects:
            limit.delete()
        for limit in limits:
            # As for the budget: never write back spent/reserved loaded with the form.
            limit.save(update_fields=["api_key", "model_slug", "limit"] if limit.pk else None)


# --- alerts -------------------------------------------------------------------------------------------
@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    """Read-only: an alert row is also what stops the same threshold firing twice in a period."""

    list_display = ["created_at", "tenant", "threshold_crossed", "spent_of_limit", "email_status", "webhook_status",
                    "webhook_attempts", "period_start"]
    list_filter = ["email_status", "webhook_status", "threshold", "tenant"]
    search_fields = ["tenant__slug", "tenant__name"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    readonly_fields = [field.name for field in Alert._meta.fields]

    @admin.display(description="threshold", ordering="threshold")
    def threshold_crossed(self, alert: Alert) -> str:
        return f"{alert.threshold}%"

    @admin.display(description="spent / limit")
    def spent_of_limit(self, alert: Alert) -> str:
        return f"{alert.spent:.4f} / {alert.limit:.4f}"


# --- daily usage --------------------------------------------------------------------------------------
CSV_COLUMNS = ["day", "tenant", "model", "task", "unit", "tier", "is_local", "requests", "ok", "errors", "rejected",
               "escalated", "cached", "units_in", "units_out", "cost", "latency_ms_sum", "compute_ms_sum", "mean_latency_ms"]


class _Echo:
    def write(self, value: str) -> str:
        return value


def usage_csv(rows: QuerySet[UsageDaily], filename: str) -> StreamingHttpResponse:
    def lines() -> Iterator[str]:
        writer = csv.writer(_Echo())
        yield writer.writerow(CSV_COLUMNS)
        for row in rows.select_related("tenant").iterator(chunk_size=2000):
            yield writer.writerow([
                row.day.isoformat(), row.tenant.slug, row.model_slug, row.task, row.unit, row.tier, row.is_local,
                row.requests, row.ok, row.errors, row.rejected, row.escalated, row.cached, row.units_in, row.units_out,
                f"{row.cost:f}", row.latency_ms_sum, row.compute_ms_sum,
                round(row.latency_ms_sum / row.requests, 2) if row.requests else "",
            ])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class UsageRangeForm(forms.Form):
    tenant = forms.ModelChoiceField(
        Tenant.objects.order_by("slug"), to_field_name="slug", required=False, empty_label="All tenants"
    )
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="UTC, included")
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="UTC, included")

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        data["end"] = data.get("end") or today()
        data["start"] = data.get("start") or data["end"] - timedelta(days=29)
        if data["start"] > data["end"]:
            self.add_error("start", "The first day must not be after the last.")
        elif (data["end"] - data["start"]).days + 1 > MAX_RANGE_DAYS:
            self.add_error("end", f"The range may span at most {MAX_RANGE_DAYS} days.")
        return data


def _share(part: Decimal | int, whole: Decimal | int) -> float:
    return round(float(part) / float(whole) * 100, 1) if whole else 0.0


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):  # rows the rollup rewrites from the inference records
    list_display = ["day", "tenant", "model_slug", "task", "tier", "is_local", "requests", "ok", "errors", "rejected",
                    "escalated", "cached", "units", "cost", "mean_latency"]
    list_filter = ["tenant", "task", "is_local", "tier"]
    search_fields = ["tenant__slug", "model_slug"]
    date_hierarchy = "day"
    list_select_related = ["tenant"]
    actions = ["export_csv"]
    readonly_fields = [field.name for field in UsageDaily._meta.fields]

    @admin.display(description="units in → out")
    def units(self, row: UsageDaily) -> str:
        return f"{row.units_in:g} → {row.units_out:g} {row.unit}".rstrip()

    @admin.display(description="mean latency (ms)")
    def mean_latency(self, row: UsageDaily) -> str:
        return f"{row.latency_ms_sum / row.requests:.1f}" if row.requests else "-"

    @admin.action(description="Export the selected rows as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[UsageDaily]) -> StreamingHttpResponse:
        return usage_csv(queryset.order_by("day", "tenant__slug", "model_slug", "task", "unit"), "usage-selected.csv")

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("export/", view(self.export_view), name="billing_usagedaily_export"),
            path("over-time/", view(self.over_time_view), name="billing_usagedaily_over_time"),
            path("top-models/", view(self.top_models_view), name="billing_usagedaily_top_models"),
            *super().get_urls(),
        ]

    def _check_view(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The changelist as filtered (same query string), every page of it."""
        self._check_view(request)
        try:
            rows = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseRedirect(reverse("admin:billing_usagedaily_changelist") + "?e=1")
        return usage_csv(rows, "usage.csv")

    def _report(self, request: HttpRequest, template: str, title: str,
                build: Callable[..., dict[str, Any]]) -> TemplateResponse:
        self._check_view(request)
        form = UsageRangeForm(request.GET or {})
        context = {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": title, "form": form,
            "max_range_days": MAX_RANGE_DAYS,
        }
        if form.is_valid():
            tenant, start, end = form.cleaned_data["tenant"], form.cleaned_data["start"], form.cleaned_data["end"]
            context.update(tenant=tenant, start=start, end=end, export_query=self._export_query(tenant, start, end),
                           **build(tenant=tenant, start=start, end=end))
        return TemplateResponse(request, f"admin/billing/usagedaily/{template}", context)

    @staticmethod
    def _export_query(tenant: Tenant | None, start: date, end: date) -> str:
        query = f"day__gte={start.isoformat()}&day__lte={end.isoformat()}"
        return f"{query}&tenant__id__exact={tenant.pk}" if tenant is not None else query

    def over_time_view(self, request: HttpRequest) -> TemplateResponse:
        def build(*, tenant: Tenant | None, start: date, end: date) -> dict[str, Any]:
            series = daily_series(day_from=start, day_to=end, tenant=tenant)
            top_cost = max((day["cost"] for day in series), default=Decimal("0"))
            top_requests = max((day["requests"] for day in series), default=0)
            for day in series:
                day["cost_width"] = _share(day["cost"], top_cost)
                day["requests_width"] = _share(day["requests"], top_requests)
                day["local_share"] = _share(day["local_requests"], day["requests"])
            requests = sum(day["requests"] for day in series)
            return {
                "series": series, "total_requests": requests, "total_cost": sum((day["cost"] for day in series), Decimal("0")),
                "local_share": _share(sum(day["local_requests"] for day in series), requests),
            }

        return self._report(request, "over_time.html", "Usage over time", build)

    def top_models_view(self, request: HttpRequest) -> TemplateResponse:
        def build(*, tenant: Tenant | None, start: date, end: date) -> dict[str, Any]:
            models = top_models(day_from=start, day_to=end, tenant=tenant)
            total = usage_rows(day_from=start, day_to=end, tenant=tenant).aggregate(cost=Sum("cost"))["cost"] or Decimal("0")
            for model in models:
                model["share"] = _share(model["cost"], total)
                model["mean_latency_ms"] = model["latency_ms_sum"] / model["requests"] if model["requests"] else None
            return {"models": models, "total_cost": total}

        return self._report(request, "top_models.html", "Top models by cost", build)
