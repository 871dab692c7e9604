from __future__ import annotations

from rest_framework import serializers

from tenants.models import ApiKey, Tenant


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["slug", "name", "status", "created_at"]


class ApiKeySerializer(serializers.ModelSerializer):
    state = serializers.CharField(read_only=True)

    class Meta:
        model = ApiKey
        fields = ["prefix", "name", "scopes", "rpm_limit", "tpm_limit", "state", "created_at", "expires_at", "revoked_at", "last_used_at"]


class MeSerializer(serializers.Serializer):
    tenant = TenantSerializer()
    key = ApiKeySerializer()
