"""How API-key authentication appears in the OpenAPI schema."""
from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "mg_<prefix>_<secret>",
            "description": "An API key, as `Authorization: Bearer mg_…` (or the same key in `x-api-key`).",
        }
