"""Tenants and their API keys. A key is stored as a public prefix and the SHA-256 of its secret."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

KEY_PREFIX_BYTES = 6  # 12 hex characters: public, used to find the row
KEY_SECRET_BYTES = 32  # 256 bits: the part that is hashed and never stored
KEY_PATTERN = re.compile(r"^mg_(?P<prefix>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")


class Scope(models.TextChoices):
    """What a key may do. `*` grants everything, including scopes added later."""

    ALL = "*", "Everything"
    TRANSLATE = "translate", "Translate text"
    DETECT_LANGUAGE = "detect_language", "Detect languages"
    CLASSIFY = "classify", "Classify text"
    EMBEDDINGS = "embeddings", "Create embeddings"
    RERANK = "rerank", "Rerank documents"
    CHAT = "chat", "Chat and text generation"
    AUDIO = "audio", "Speech recognition and intent"
    COLLECTIONS = "collections", "Manage and search collections"
    INFERENCES = "inferences", "Read inference records, send feedback"
    USAGE = "usage", "Read usage and budget"
    KEYS = "keys", "Read the tenant's keys"


def default_scopes() -> list[str]:
    return [Scope.ALL.value]


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=50, unique=True, help_text="Stable identifier used in commands and logs.")
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name="requests per minute",
        help_text="Rate limit shared by all the tenant's keys; empty means none.",
    )
    tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name="tokens per minute",
        help_text="Token rate limit (input + output) shared by all the tenant's keys; empty means none.",
    )
    store_full_text = models.BooleanField(
        default=False, help_text="Keep the full input of every inference (otherwise a digest and a short preview)."
    )
    record_retention_days = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name="keep record texts (days)",
        help_text="How long inference records keep their previews and full texts; costs and usage stay. "
                  "Empty: MODELGATE_RECORD_RETENTION_DAYS.",
    )
    # Every record of the tenant created before this has had its texts blanked: the prune starts here.
    record_texts_pruned_until = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def usable(self, now: datetime | None = None) -> "ApiKeyQuerySet":
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))


class ApiKey(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = ArrayField(
        models.CharField(max_length=32, choices=Scope.choices), default=default_scopes, size=len(Scope.choices)
    )
    rpm_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="requests per minute",
        help_text="Per-key rate limit; empty means the tenant's default.",
    )
    tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], verbose_name="tokens per minute",
        help_text="Per-key token rate limit (input + output); empty means none beyond the tenant's.",
    )
    local_only = models.BooleanField(default=False, help_text="Only local models may answer this key's requests.")
    allowed_models = ArrayField(
        models.CharField(max_length=100), default=list, blank=True, help_text="Model slugs this key may use; empty: all."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__slug", "-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (mg_{self.prefix}_…)"

    # --- secrets ---------------------------------------------------------------------------
    @staticmethod
    def hash_secret(secret: str) -> str:
        # The secret carries 256 random bits: a fast hash is enough, there is nothing to brute-force.
        return hashlib.sha256(secret.encode()).hexdigest()

    def assign_new_secret(self) -> str:
        """Give this unsaved key a prefix and secret; the returned plaintext is the only copy."""
        prefix = secrets.token_hex(KEY_PREFIX_BYTES)
        secret = secrets.token_urlsafe(KEY_SECRET_BYTES)
        self.prefix, self.secret_hash = prefix, self.hash_secret(secret)
        return f"mg_{prefix}_{secret}"

    @classmethod
    def build(cls, **fields: object) -> tuple["ApiKey", str]:
        key = cls(**fields)
        return key, key.assign_new_secret()

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, self.hash_secret(secret))

    # --- state -----------------------------------------------------------------------------
    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def state(self) -> str:
        if self.is_revoked:
            return "revoked"
        if self.is_expired():
            return "expired"
        return "active"

    def has_scope(self, scope: str) -> bool:
        return Scope.ALL in self.scopes or scope in self.scopes

    def may_use(self, slug: str, *, is_local: bool) -> bool:
        if self.local_only and not is_local:
            return False
        return not self.allowed_models or slug in self.allowed_models


class TenantDeletion(models.Model):
    """A tenant being deleted in the background, batch by batch (tenants.deletion). The row outlives the
    tenant, so it names it by id and slug rather than by a foreign key, and keeps what was removed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    tenant_id = models.BigIntegerField(db_index=True)
    slug = models.SlugField(max_length=50)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    counts = models.JSONField(default=dict, blank=True, help_text="Rows removed so far, by kind (app.model).")
    requested_by = models.CharField(max_length=150, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One deletion at a time per tenant: asking twice queues nothing more.
            models.UniqueConstraint(fields=["tenant_id"], condition=Q(status__in=["pending", "running"]),
                                    name="one_open_deletion_per_tenant"),
        ]

    def __str__(self) -> str:
        return f"deletion of {self.slug} ({self.status})"

    @property
    def removed(self) -> int:
        return sum(self.counts.values())
