"""The shapes of billing's API: alert settings, alerts and usage reports."""
from __future__ import annotations

import re
from datetime import date
from typing import Any

from rest_framework import serializers

from billing.models import Alert
from billing.usage import GROUP_FIELDS, MAX_RANGE_DAYS, today

ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


class AlertSettingsSerializer(serializers.Serializer):
    alert_email = serializers.EmailField(required=False, allow_blank=True)
    webhook_url = serializers.URLField(required=False, allow_blank=True, max_length=500)
    rotate_webhook_secret = serializers.BooleanField(required=False, default=False,
                                                     help_text="Issue a new signing secret for the current webhook.")

    def validate(self, attrs: dict) -> dict:
        if not {"alert_email", "webhook_url"} & attrs.keys() and not attrs.get("rotate_webhook_secret"):
            raise serializers.ValidationError("Send alert_email, webhook_url or rotate_webhook_secret.")
        return attrs


class AlertSerializer(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "kind", "threshold", "spent", "limit", "period_start", "subject", "message", "created_at",
                  "email_status", "webhook_status",
                  "webhook_attempts"]


class IsoDateField(serializers.DateField):
    """YYYY-MM-DD exactly: strptime would also take 2026-1-1, and a date read two ways is a report of the wrong days."""

    def to_internal_value(self, value: object) -> date:
        if not isinstance(value, str) or not ISO_DATE.fullmatch(value):
            raise serializers.ValidationError("A date as YYYY-MM-DD (e.g. 2026-01-31).")
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise serializers.ValidationError("Not a day of the calendar.") from None


class UsageQuerySerializer(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=list(GROUP_FIELDS), default="day", help_text="One row per day, model or task.")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # `from` is a Python keyword: it cannot be declared as a class attribute.
        fields["from"] = IsoDateField(required=False, help_text="First day (UTC, YYYY-MM-DD); default: the first of `to`'s month.")
        fields["to"] = IsoDateField(required=False, help_text="Last day, included (UTC, YYYY-MM-DD); default: today.")
        return fields

    def to_internal_value(self, data: Any) -> dict:
        # A form-style parameter given empty (`from=`) would otherwise fall back to its default unseen.
        empty = [name for name in ("from", "to", "group_by") if name in data and data.get(name) == ""]
        if empty:
            raise serializers.ValidationError({empty[0]: ["Must not be empty: leave the parameter out for its default."]})
        return super().to_internal_value(data)

    def validate(self, data: dict) -> dict:
        data["to"] = data.get("to") or today()
        data["from"] = data.get("from") or data["to"].replace(day=1)
        if data["from"] > data["to"]:
            raise serializers.ValidationError({"from": "Must not be after `to`."})
        if (data["to"] - data["from"]).days + 1 > MAX_RANGE_DAYS:
            raise serializers.ValidationError({"to": f"The range may span at most {MAX_RANGE_DAYS} days."})
        return data


class UsageSplitSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=20, decimal_places=12)


class UsageSumsSerializer(serializers.Serializer):
    requests = serializers.IntegerField(help_text="Attempts recorded: an escalated request counts once per model tried.")
    ok = serializers.IntegerField()
    errors = serializers.IntegerField()
    rejected = serializers.IntegerField()
    escalated = serializers.IntegerField()
    cached = serializers.IntegerField()
    units = serializers.DictField(
        child=serializers.DictField(child=serializers.FloatField()),
        help_text='By kind of unit (tokens, characters, seconds, items): {"in": …, "out": …}. Kinds are never added together.',
    )
    cost = serializers.DecimalField(max_digits=20, decimal_places=12)
    mean_latency_ms = serializers.FloatField(allow_null=True)
    local = UsageSplitSerializer(help_text="Served by local models.")
    premium = UsageSplitSerializer(help_text="Served by provider APIs (standard and premium tiers).")
    evaluation = UsageSplitSerializer(help_text="Shadow evaluation: premium calls that measured local answers, paid from "
                                                "the evaluation allowance, never the budget; not in the other figures.")


class UsageRowSerializer(UsageSumsSerializer):
    day = serializers.DateField(required=False, help_text="With group_by=day.")
    model = serializers.CharField(required=False, help_text="With group_by=model.")
    task = serializers.CharField(required=False, help_text="With group_by=task.")


class UsageReportSerializer(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=list(GROUP_FIELDS))
    totals = UsageSumsSerializer()
    rows = UsageRowSerializer(many=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"], fields["to"] = serializers.DateField(), serializers.DateField()
        return fields
