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

    class QualityMetric(models.TextChoices):
        PGR = "pgr", "Share of the quality gap recovered (PGR)"
        AGREEMENT = "agreement", "Agreement with premium"

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
    auto_tune = models.BooleanField(default=True, help_text="The tuner moves the confidence floor toward the quality target.")
    locked = models.BooleanField(default=False, help_text="Locked thresholds are never changed by the tuner.")
    quality_metric = models.CharField(
        max_length=16, choices=QualityMetric.choices, default=QualityMetric.PGR,
        help_text="What the target measures: the share of the local→premium quality gap recovered (PGR), or mean agreement with premium.",
    )
    quality_target = models.FloatField(
        default=0.95, validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="The tuner keeps the estimated quality at or above this while serving as much as it can locally.",
    )
    shadow_rate = models.FloatField(
        default=0.02, validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="Share of locally answered requests also sent to the premium candidate in the background, to measure "
                  "agreement (0: off). Billed to the tenant's evaluation allowance, never to its budget.",
    )
    tune_window_days = models.PositiveSmallIntegerField(default=7, validators=[MinValueValidator(1), MaxValueValidator(90)])
    tune_min_samples = models.PositiveIntegerField(default=100, help_text="Labelled records needed before the tuner moves the floor.")
    tune_max_step = models.FloatField(default=0.1, validators=[MinValueValidator(0.001), MaxValueValidator(1)],
                                      help_text="The most one tuning run moves the floor.")
    tune_hysteresis = models.FloatField(default=0.02, validators=[MinValueValidator(0), MaxValueValidator(1)],
                                        help_text="Smaller moves than this are not made (no flapping).")
    learned_router = models.ForeignKey(
        "LearnedRouter", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="When set, its probability that the local answer agrees with premium is the score the floor applies to.",
    )
    drift_flagged_at = models.DateTimeField(null=True, blank=True, help_text="Set by the daily drift check; cleared by the next stable one.")
    drift_detail = models.TextField(blank=True)
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

    class EscalationCause(models.TextChoices):
        LOW_CONFIDENCE = "low_confidence", "Below the floor"
        VALIDATION = "validation", "Failed a quality check"
        ERROR = "error", "Model failed"
        COMPLEXITY = "complexity", "Above the complexity threshold"
        BUDGET = "budget", "Budget or sub-limit"

    class Purpose(models.TextChoices):
        ANSWER = "answer", "Answer to a tenant"
        EVALUATION = "evaluation", "Shadow evaluation"

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
    confidence = models.FloatField(null=True, blank=True, help_text="The local model's own confidence (the weakest item's); "
                                                                    "empty for premium answers, which have no calibrated one.")
    routing_reason = models.TextField(blank=True)
    # What the decision was made with, so that it can be judged later against what premium said.
    policy = models.ForeignKey(RoutingPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="records")
    floor = models.FloatField(null=True, blank=True, help_text="The confidence floor in force.")
    threshold = models.FloatField(null=True, blank=True, help_text="The complexity threshold in force (chat).")
    score = models.FloatField(null=True, blank=True, help_text="The routing score the floor was applied to (the weakest "
                                                              "kept item's): the confidence, or the learned router's probability.")
    features = models.JSONField(null=True, blank=True, help_text="What the learned router reads of the weakest item "
                                                                  "(top-1, margin, length, script, label).")
    escalation_cause = models.CharField(max_length=16, choices=EscalationCause.choices, blank=True)
    items_escalated = models.PositiveIntegerField(default=0, help_text="Items of this attempt passed on to the next candidate.")
    purpose = models.CharField(max_length=16, choices=Purpose.choices, default=Purpose.ANSWER)
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
            models.Index(fields=["policy", "-created_at"], name="record_policy_time"),
            # The admin's changelist: newest first, unfiltered or by status (errors to review).
            models.Index(fields=["-created_at"], name="record_time"),
            models.Index(fields=["status", "-created_at"], name="record_status_time"),
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


class QualitySignal(models.Model):
    """How good one local answer was, from one source. Sources differ in what they can see: shadow
    evaluation samples answers at every score, escalation pairs exist only below the floor (so they
    must never estimate quality above it), feedback and operator review come from people."""

    class Source(models.TextChoices):
        SHADOW = "shadow", "Shadow evaluation"
        ESCALATION = "escalation", "Escalation pair"
        FEEDBACK = "feedback", "Tenant feedback"
        OPERATOR = "operator", "Operator review"

    record = models.ForeignKey(InferenceRecord, on_delete=models.CASCADE, related_name="quality_signals")
    source = models.CharField(max_length=16, choices=Source.choices)
    agreement = models.FloatField(validators=[MinValueValidator(0), MaxValueValidator(1)],
                                  help_text="1: as good as premium's answer (or judged good); 0: wrong.")
    teacher = models.ForeignKey(InferenceRecord, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                help_text="The premium attempt compared with (shadow evaluation, escalation pair).")
    detail = models.CharField(max_length=300, blank=True)
    created_by = models.CharField(max_length=150, blank=True, help_text="The operator, for reviews.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["record", "source"], name="one_signal_per_record_and_source")]

    def __str__(self) -> str:
        return f"{self.source} {self.agreement:.2f}"


class ThresholdChange(models.Model):
    """One decision about a policy's floor, also when it kept the value: who decided, why in words,
    and the evidence (sample size, curve points, projected quality, premium share and cost)."""

    class DecidedBy(models.TextChoices):
        TUNER = "tuner", "Tuner"
        OPERATOR = "operator", "Operator"
        ROLLBACK = "rollback", "Rollback"

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="threshold_changes")
    old = models.FloatField()
    new = models.FloatField()
    decided_by = models.CharField(max_length=16, choices=DecidedBy.choices)
    actor = models.CharField(max_length=150, blank=True)
    reason = models.TextField()
    evidence = models.JSONField(default=dict, blank=True)
    rolled_back_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["policy", "-created_at"], name="threshold_change_policy_time")]

    def __str__(self) -> str:
        return f"{self.policy}: {self.old:.3f} → {self.new:.3f} ({self.decided_by})"

    @property
    def changed(self) -> bool:
        return self.old != self.new


class LearnedRouter(models.Model):
    """A fitted router for one policy: plain arrays in JSON (never pickle), with its held-out
    evaluation beside the confidence router's on the same records. Used only when it was better."""

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="learned_routers")
    version = models.PositiveIntegerField()
    weights = models.JSONField(help_text="routing.learned.RouterWeights.to_json()")
    trained_on = models.PositiveIntegerField()
    held_out = models.PositiveIntegerField()
    apgr = models.FloatField(help_text="APGR of this router on the held-out records.")
    baseline_apgr = models.FloatField(help_text="APGR of routing by confidence on the same records.")
    accepted = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["policy", "version"], name="one_router_version_per_policy")]

    def __str__(self) -> str:
        return f"{self.policy} router v{self.version}"
