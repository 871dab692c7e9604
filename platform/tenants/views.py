from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.models import ApiKey, Scope
from tenants.serializers import ApiKeySerializer, MeSerializer


class MeView(APIView):
    """Who is calling: the tenant and the key, with its scopes. Any valid key may ask."""

    @extend_schema(responses=MeSerializer, summary="The calling tenant and key")
    def get(self, request: Request) -> Response:
        key: ApiKey = request.auth
        return Response(MeSerializer({"tenant": key.tenant, "key": key}).data)


class ApiKeyListView(generics.ListAPIView):
    """The tenant's keys (prefixes and metadata; secrets are never stored, so never shown)."""

    required_scope = Scope.KEYS
    serializer_class = ApiKeySerializer
    queryset = ApiKey.objects.none()
    pagination_class = None

    def get_queryset(self) -> QuerySet[ApiKey]:
        return self.request.auth.tenant.api_keys.order_by("-created_at")


class ApiKeyDetailView(generics.RetrieveAPIView):
    required_scope = Scope.KEYS
    serializer_class = ApiKeySerializer
    queryset = ApiKey.objects.none()
    lookup_field = "prefix"

    def get_queryset(self) -> QuerySet[ApiKey]:
        # Scoped lookup: another tenant's key is as missing as a key that never existed.
        return self.request.auth.tenant.api_keys.all()
