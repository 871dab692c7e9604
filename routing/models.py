"""Routing policies, the inference record every request leaves, and tenants' provider credentials."""
from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.contrib.postgres.indexes import BrinIndex
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.crypto import PROVIDER_CREDENTIALS
from registry.models import TASK_CHOICES, ModelSpec
from tenants.models import ApiKey, Tenant

MONEY = dict(max_digits=20, decimal_places=12, default=Decimal("0"))


class RoutingPolicy(models.Model):
    """How one task is routed, for every tenant (tenant empty) or for one tenant."""

    class BudgetBehaviour(models.TextChoices):
        BLOCK = "block", "Refuse (402)"
        LOCAL_ONLY = "local_only", "Serve from local models only"

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="routing_policies")
    task = models.CharField(max_length=32, choices=TASK_CHOICES)
    candidates = models.JSONField(
        default=list, blank=True, help_text="Model slugs in the order they are tried: local first, premium last."
    )
    complexity_threshold = models.FloatField(
        default=0.6,
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="Chat: requests scoring above this skip local models.",
    )
    confidence_floor = models.FloatField(
        default=0.5,
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="A local answer less confident than this escalates to the next candidate.",
    )
    on_budget_exhausted = models.CharField(max_length=16, choices=BudgetBehaviour.choices, default=BudgetBehaviour.BLOCK)
    cache_enabled = models.BooleanField(default=False, help_text="Answer repeated identical inputs from the result cache.")
    cache_ttl_seconds = models.PositiveIntegerField(default=3600, validators=[MinValueValidator(1)])
    auto_tune = models.BooleanField(default=True)
    locked = models.BooleanField(default=False, help_text="Locked thresholds are never changed by the tuner.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "routing policies"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "task"], name="one_policy_per_tenant_and_task"),
            models.UniqueConstraint(fields=["task"], condition=Q(tenant__isnull=True), name="one_global_policy_per_task"),
        ]

    def __str__(self) -> str:
        return f"{self.task} ({self.tenant.slug if self.tenant else 'global'})"

    def clean(self) -> None:
        if not isinstance(self.candidates, list) or not all(isinstance(s, str) for s in self.candidates):
            raise ValidationError({"candidates": "A list of model slugs."})
        found = {spec.slug: spec for spec in ModelSpec.objects.filter(slug__in=self.candidates)}
        problems = [f"{slug!r} is not registered" for slug in self.candidates if slug not in found]
        problems += [f"{slug!r} serves {found[slug].task}" for slug in self.candidates if slug in found and found[slug].task != self.task]
        if len(set(self.candidates)) != len(self.candidates):
            problems.append("a model is listed twice")
        if problems:
            raise ValidationError({"candidates": "; ".join(problems) + "."})


class InferenceRecord(models.Model):
    """One attempt at answering a request: written pending at admission, completed after.

    An escalation or fallback is a second record whose `escalated_from` points at the first; both
    share the request id.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        OK = "ok", "OK"
        ERROR = "error", "Error"
        REJECTED = "rejected", "Rejected"
        ESCALATED = "escalated", "Escalated"
        ABANDONED = "abandoned", "Abandoned"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request_id = models.CharField(max_length=128, db_index=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="inference_records")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    task = models.CharField(max_length=32, choices=TASK_CHOICES)
    model = models.ForeignKey(ModelSpec, null=True, on_delete=models.SET_NULL, related_name="+")
    model_slug = models.CharField(max_length=100, blank=True)
    tier = models.CharField(max_length=16, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    input_digest = models.CharField(max_length=64, blank=True)
    input_preview = models.CharField(max_length=300, blank=True)
    input_text = models.TextField(blank=True, help_text="Only for tenants who opted in to full-text storage.")
    output_preview = models.CharField(max_length=300, blank=True)
    items = models.PositiveIntegerField(default=1)
    unit = models.CharField(max_length=16, blank=True, help_text="tokens, characters, seconds or items")
    units_in = models.FloatField(default=0)
    units_out = models.FloatField(default=0)

    queue_ms = models.FloatField(null=True, blank=True)
    compute_ms = models.FloatField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    reserved_cost = models.DecimalField(**MONEY)
    cost = models.DecimalField(**MONEY)

    complexity = models.FloatField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    routing_reason = models.TextField(blank=True)
    escalated_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="escalations")
    cached = models.BooleanField(default=False)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    feedback_score = models.SmallIntegerField(null=True, blank=True)
    feedback_comment = models.TextField(blank=True)
    feedback_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="record_tenant_time"),
            models.Index(fields=["task", "-created_at"], name="record_task_time"),
            models.Index(fields=["model_slug", "-created_at"], name="record_model_time"),
            models.Index(fields=["created_at"], condition=Q(status="pending"), name="record_pending"),
            # Day ranges for the usage rollups: rows arrive in time order, so a block range index is tiny.
            BrinIndex(fields=["created_at"], name="record_created_brin"),
        ]

    def __str__(self) -> str:
        return f"{self.task} {self.model_slug or '-'} {self.status}"


class ProviderCredential(models.Model):
    """An API key for a provider: the operator's (tenant empty) or a tenant's own. Encrypted at rest,
    never logged, never returned by any API; the admin shows only whether one is set."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai-compatible", "OpenAI-compatible server"

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="provider_credentials")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    base_url = models.URLField(blank=True, help_text="Only for OpenAI-compatible servers (…/v1).")
    encrypted_api_key = models.TextField(editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind", "base_url"], name="one_credential_per_provider"),
            models.UniqueConstraint(fields=["kind", "base_url"], condition=Q(tenant__isnull=True), name="one_operator_credential_per_provider"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} ({self.tenant.slug if self.tenant else 'operator'})"

    def set_api_key(self, api_key: str) -> None:
        self.encrypted_api_key = PROVIDER_CREDENTIALS.encrypt(api_key)

    def api_key(self) -> str:
        return PROVIDER_CREDENTIALS.decrypt(self.encrypted_api_key)
