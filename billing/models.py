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
    alert_email = models.EmailField(blank=True, help_text="Where threshold alerts are mailed (when email is configured).")
    webhook_url = models.URLField(blank=True, max_length=500, help_text="Threshold alerts are POSTed here, HMAC-signed.")
    webhook_secret = models.TextField(blank=True, editable=False, help_text="Encrypted at rest; shown once when set.")
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


class EvaluationAllowance(models.Model):
    """What a tenant's shadow evaluation may spend per calendar month: the premium calls that measure
    local answers never touch the tenant's budget, and never spend past this (same conditional
    UPDATE as the budget). Created with MODELGATE_EVALUATION_ALLOWANCE on first use."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="evaluation_allowance")
    limit = models.DecimalField(max_digits=20, decimal_places=12, validators=[MinValueValidator(Decimal("0"))])
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    spent = models.DecimalField(**MONEY)
    reserved = models.DecimalField(**MONEY)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(spent__lte=models.F("limit")), name="evaluation_spent_within_limit"),
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="evaluation_reserved_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}: evaluation {self.spent:.4f} + {self.reserved:.4f} of {self.limit:.4f}"


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


class SpendLimit(models.Model):
    """A sub-limit inside a tenant's budget: one API key, or one model, may spend at most `limit` in
    the budget's period. Moved by the same conditional UPDATEs as the budget, in one transaction."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="sub_limits")
    api_key = models.ForeignKey(
        "tenants.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="spend_limits",
        help_text="Limit this key's spending…",
    )
    model_slug = models.CharField(max_length=100, blank=True, help_text="…or this model's (a ModelSpec slug).")
    limit = models.DecimalField(max_digits=20, decimal_places=12, validators=[MinValueValidator(Decimal("0"))])
    spent = models.DecimalField(**MONEY)
    reserved = models.DecimalField(**MONEY)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(spent__lte=models.F("limit")), name="sublimit_spent_within_limit"),
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="sublimit_reserved_not_negative"),
            models.CheckConstraint(
                condition=(models.Q(api_key__isnull=False) & models.Q(model_slug=""))
                | (models.Q(api_key__isnull=True) & ~models.Q(model_slug="")),
                name="sublimit_key_xor_model",
            ),
            models.UniqueConstraint(fields=["budget", "api_key"], condition=models.Q(api_key__isnull=False), name="one_limit_per_key"),
            models.UniqueConstraint(fields=["budget", "model_slug"], condition=~models.Q(model_slug=""), name="one_limit_per_model"),
        ]

    def __str__(self) -> str:
        subject = f"key {self.api_key.prefix}" if self.api_key_id else f"model {self.model_slug}"
        return f"{subject}: {self.spent:.4f} + {self.reserved:.4f} of {self.limit:.4f}"

    @property
    def remaining(self) -> Decimal:
        return max(Decimal("0"), self.limit - self.spent - self.reserved)


class Alert(models.Model):
    """Something a tenant's alert channels (the budget's email and webhook) must hear of: a budget
    threshold crossed (one row per budget, period and threshold, whatever the concurrency), or the
    routing of one of its tasks drifting (one row per policy and day)."""

    class Kind(models.TextChoices):
        BUDGET = "budget", "Budget threshold"
        DRIFT = "drift", "Routing drift"
        MODEL = "model", "Model unhealthy"

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Not configured"

    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.BUDGET)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alerts")
    budget = models.ForeignKey(Budget, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts",
                               help_text="Where the alert is delivered (its email and webhook); none: shown in the admin only.")
    period_start = models.DateTimeField(help_text="Budget alerts: the period; drift alerts: the day of the check.")
    threshold = models.PositiveSmallIntegerField(default=0, help_text="Percent of the limit (budget alerts).")
    spent = models.DecimalField(max_digits=20, decimal_places=12, default=Decimal("0"))
    limit = models.DecimalField(max_digits=20, decimal_places=12, default=Decimal("0"))
    subject = models.CharField(max_length=200, blank=True, help_text="Drift alerts: the policy concerned.")
    message = models.TextField(blank=True, help_text="Drift alerts: what moved, in words.")
    created_at = models.DateTimeField(default=timezone.now)
    email_status = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.PENDING)
    webhook_status = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.PENDING)
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "threshold"], condition=models.Q(kind="budget"),
                                    name="one_alert_per_threshold"),
            models.UniqueConstraint(fields=["tenant", "subject", "period_start"], condition=models.Q(kind="drift"),
                                    name="one_drift_alert_per_policy_and_day"),
            models.UniqueConstraint(fields=["tenant", "subject", "period_start"], condition=models.Q(kind="model"),
                                    name="one_model_alert_per_model_and_day"),
        ]

    def __str__(self) -> str:
        if self.kind == self.Kind.DRIFT:
            return f"{self.tenant.slug}: drift in {self.subject}"
        if self.kind == self.Kind.MODEL:
            return f"{self.tenant.slug}: {self.subject} unhealthy"
        return f"{self.tenant.slug}: {self.threshold}% of {self.limit:.4f}"


class UsageDaily(models.Model):
    """Inference records rolled up by tenant × day × model × task (× unit): what reports read."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_days")
    day = models.DateField()
    model_slug = models.CharField(max_length=100)
    task = models.CharField(max_length=32)
    unit = models.CharField(max_length=16, blank=True)
    purpose = models.CharField(max_length=16, default="answer",
                               help_text="answer: tenants' requests (the budget's); evaluation: shadow evaluation (the allowance's).")
    tier = models.CharField(max_length=16, blank=True)
    is_local = models.BooleanField(default=True)
    requests = models.PositiveIntegerField(default=0, help_text="Attempts recorded (escalations count once each).")
    ok = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    cached = models.PositiveIntegerField(default=0)
    units_in = models.FloatField(default=0)
    units_out = models.FloatField(default=0)
    cost = models.DecimalField(**MONEY)
    latency_ms_sum = models.FloatField(default=0)
    compute_ms_sum = models.FloatField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-day", "tenant_id", "model_slug"]
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day", "model_slug", "task", "unit", "purpose"], name="one_usage_row_per_day"),
        ]
        indexes = [models.Index(fields=["tenant", "day"], name="usage_tenant_day")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.day} {self.model_slug} {self.task}"
