"""Tenants read their own budget, usage and alerts, and say where alerts go."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import alerts
from billing.models import Alert, Budget
from billing.services import budget_status
from billing.serializers import AlertSerializer, AlertSettingsSerializer, UsageQuerySerializer, UsageReportSerializer
from billing.usage import MAX_RANGE_DAYS, usage_report
from core.api import parse
from core.errors import NotFound
from tenants.models import Scope


class BudgetView(APIView):
    required_scope = Scope.USAGE

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="The tenant's budget: limit, spent, held, reset")
    def get(self, request: Request) -> Response:
        # Read afresh: the copy that came with the key may be a few seconds old.
        budget = Budget.objects.filter(tenant_id=request.auth.tenant_id).first()
        status = budget_status(budget)
        if status is None:
            return Response({"budget": None, "message": "No budget is set: spending is not limited."})

        def plain(value: object) -> object:
            if isinstance(value, Decimal):
                return f"{value:f}"
            if isinstance(value, datetime):
                return value.isoformat()
            return value

        body = {name: plain(value) for name, value in status.items()}
        body.update(alert_thresholds=budget.alert_thresholds, alert_email=budget.alert_email, webhook_url=budget.webhook_url)
        return Response({"budget": body})

    @extend_schema(
        request=AlertSettingsSerializer, responses={200: OpenApiTypes.OBJECT},
        summary="Where budget alerts go: an email address and a webhook (its signing secret is shown once)",
    )
    def patch(self, request: Request) -> Response:
        # Limits are the operator's; where the alerts go is the tenant's, with a key that may do everything.
        if not request.auth.has_scope(Scope.ALL):
            raise PermissionDenied("Changing alert settings needs a key with every scope (*).")
        budget = Budget.objects.filter(tenant_id=request.auth.tenant_id).first()
        if budget is None:
            raise NotFound("No budget is set for this tenant; an operator sets one in the admin.")
        data = parse(AlertSettingsSerializer, request)
        body: dict[str, object] = {}
        if "alert_email" in data:
            budget.alert_email = data["alert_email"]
        if "webhook_url" in data or data.get("rotate_webhook_secret"):
            url = data.get("webhook_url", budget.webhook_url)
            if not url and "webhook_url" not in data:
                raise serializers.ValidationError({"rotate_webhook_secret": ["There is no webhook to rotate the secret of."]})
            try:
                secret = alerts.set_webhook(budget, url)
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"webhook_url": exc.messages}) from None
            if secret:
                body["webhook_secret"] = secret
        budget.save(update_fields=["alert_email", "webhook_url", "webhook_secret", "updated_at"])
        body.update(alert_email=budget.alert_email, webhook_url=budget.webhook_url)
        if "webhook_secret" in body:
            body["message"] = "Keep the webhook secret now: it is not shown again. Requests carry x-modelgate-signature."
        return Response(body)


class AlertsView(generics.ListAPIView):
    """The tenant's budget alerts, newest first."""

    required_scope = Scope.USAGE
    serializer_class = AlertSerializer

    def get_queryset(self) -> QuerySet[Alert]:
        return Alert.objects.filter(tenant=self.request.auth.tenant).order_by("-created_at")


class UsageView(APIView):
    required_scope = Scope.USAGE

    @extend_schema(
        parameters=[UsageQuerySerializer], responses={200: UsageReportSerializer},
        summary="The tenant's usage over a range of days: totals and one row per day, model or task",
        description=(
            "Read from the daily rollups, which are recomputed every five minutes: the last minutes may not show yet. "
            f"The range is at most {MAX_RANGE_DAYS} days; the default is the current month (UTC)."
        ),
    )
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        return Response(
            usage_report(tenant=request.auth.tenant, day_from=data["from"], day_to=data["to"], group_by=data["group_by"])
        )
