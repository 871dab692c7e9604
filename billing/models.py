"""Budgets: a hard spending limit per tenant and period, with money moved only by conditional UPDATEs."""
from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from tenants.models import Tenant

MONEY = dict(max_digits=20, decimal_places=12, default=Decimal("0"))


def default_thresholds() -> list[int]:
    return [50, 80, 100]


class Budget(models.Model):
    class Period(models.TextChoices):
        MONTHLY = "monthly", "Calendar month"
        DAILY = "daily", "Day"
        CUSTOM = "custom", "Custom number of days"

    class AtLimit(models.TextChoices):
        BLOCK = "block", "Refuse every paid request (402)"
        LOCAL_ONLY = "local_only", "Keep serving local models, refuse premium"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="budget")
    limit = models.DecimalField(max_digits=20, decimal_places=12, validators=[MinValueValidator(Decimal("0"))])
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    custom_days = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(366)])
    period_start = models.DateTimeField(default=timezone.now)
    period_end = models.DateTimeField()
    spent = models.DecimalField(**MONEY)
    reserved = models.DecimalField(**MONEY)
    at_limit = models.CharField(max_length=16, choices=AtLimit.choices, default=AtLimit.BLOCK)
    alert_thresholds = ArrayField(
        models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(100)]),
        default=default_thresholds, blank=True,
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # The database itself refuses an overrun, whatever code path tries it.
            models.CheckConstraint(condition=models.Q(spent__lte=models.F("limit")), name="budget_spent_within_limit"),
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="budget_reserved_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}: {self.spent:.4f} + {self.reserved:.4f} of {self.limit:.4f}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self.period_end:
            self.period_start, self.period_end = period_bounds(self.period, self.custom_days, timezone.now())
        super().save(*args, **kwargs)

    @property
    def remaining(self) -> Decimal:
        return max(Decimal("0"), self.limit - self.spent - self.reserved)


def period_bounds(period: str, custom_days: int | None, moment: datetime) -> tuple[datetime, datetime]:
    """The window containing `moment` (UTC): a calendar month, a day, or `custom_days` from the day."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.DAILY:
        return day, day + timedelta(days=1)
    if period == Budget.Period.CUSTOM:
        return day, day + timedelta(days=custom_days or 30)
    start = day.replace(day=1)
    days = calendar.monthrange(start.year, start.month)[1]
    return start, start + timedelta(days=days)


class RateCounter(models.Model):
    """Requests counted per (limited subject, minute window), shared by every process on the database."""

    bucket = models.CharField(max_length=64)
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bucket", "window_start"], name="one_counter_per_window")]
        indexes = [models.Index(fields=["window_start"], name="ratecounter_window")]
