"""Operator screens for budgets: spent, held and limit at a glance."""
from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from billing.models import Budget


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["tenant", "period", "limit", "spent", "reserved", "usage", "at_limit", "period_end"]
    list_filter = ["period", "at_limit"]
    search_fields = ["tenant__slug", "tenant__name"]
    autocomplete_fields = ["tenant"]
    readonly_fields = ["spent", "reserved", "period_start", "period_end", "updated_at"]

    @admin.display(description="used")
    def usage(self, budget: Budget) -> str:
        share = float((budget.spent + budget.reserved) / budget.limit * 100) if budget.limit else 100.0
        return format_html('<progress max="100" value="{}"></progress> {}%', round(min(share, 100)), round(share, 1))
