"""Tenants read their own budget."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.services import budget_status
from tenants.models import Scope


class BudgetView(APIView):
    required_scope = Scope.USAGE

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="The tenant's budget: limit, spent, held, reset")
    def get(self, request: Request) -> Response:
        # The budget row came with the key (one query for both), as of this request.
        status = budget_status(request.auth.tenant)
        if status is None:
            return Response({"budget": None, "message": "No budget is set: spending is not limited."})

        def plain(value: object) -> object:
            if isinstance(value, Decimal):
                return f"{value:f}"
            if isinstance(value, datetime):
                return value.isoformat()
            return value

        return Response({"budget": {name: plain(value) for name, value in status.items()}})
