"""Premium models through their providers' official SDKs: credentials, then one call per task."""
from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.models import Q

from inference.errors import InvalidInput
from inference.payloads import ClassificationInput, GenerationInput, TranslationInput
from registry.models import ModelSpec
from core.recent import configuration
from routing.attempts import Outcome
from routing.models import ProviderCredential
from routing.providers import ProviderConfig, ProviderError, ProviderUnsupported, provider_for
from tenants.models import Tenant

ENV_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class MissingCredential(ProviderError):
    code = "provider_not_configured"


def provider_config(spec: ModelSpec, tenant: Tenant | None) -> ProviderConfig:
    """The tenant's own key (bring your own) wins, then the operator's stored key, then the environment."""
    return configuration.remember(
        ("provider", spec.pk, spec.updated_at, tenant.pk if tenant else None), lambda: _provider_config(spec, tenant)
    )


def _provider_config(spec: ModelSpec, tenant: Tenant | None) -> ProviderConfig:
    options = spec.options or {}
    base_url = options.get("base_url") or ""
    credential = (
        ProviderCredential.objects.filter(Q(tenant=tenant) | Q(tenant__isnull=True), kind=spec.backend, base_url=base_url)
        .order_by("tenant_id")  # a tenant's row sorts before the operator's (NULLs last)
        .first()
    )
    api_key = credential.api_key() if credential else getattr(settings, ENV_KEYS.get(spec.backend, ""), None)
    try:
        return ProviderConfig(
            kind=spec.backend, api_key=api_key, base_url=base_url or None,
            timeout=float(options.get("timeout", 30)), max_retries=int(options.get("max_retries", 2)),
            breaker_threshold=int(options.get("breaker_threshold", 5)), breaker_cooldown=float(options.get("breaker_cooldown", 30)),
        )
    except ValueError as exc:
        raise MissingCredential(f"{spec.slug}: {exc}", provider=spec.backend, retryable=False) from None


def run_premium(*, spec: ModelSpec, task: str, items: list[Any], tenant: Tenant | None = None) -> Any:
    provider = provider_for(provider_config(spec, tenant))
    model = spec.source
    started = time.perf_counter()
    tokens_in = tokens_out = 0
    values: list[Any] = []
    if task == "generation":
        for item in items:
            answer = provider.chat(model=model, request=_checked_chat(item))
            values.append(answer)
            tokens_in, tokens_out = tokens_in + answer.tokens_in, tokens_out + answer.tokens_out
    elif task == "embeddings":
        result = provider.embed(model=model, texts=list(items))
        values, tokens_in = result.value, result.tokens_in
    elif task == "translation":
        for item in items:
            assert isinstance(item, TranslationInput)
            result = provider.translate(model=model, text=item.text, source=item.source, target=item.target)
            values.append(result.value)
            tokens_in, tokens_out = tokens_in + result.tokens_in, tokens_out + result.tokens_out
    elif task == "classification":
        for item in items:
            assert isinstance(item, ClassificationInput)
            if not item.labels:
                raise InvalidInput(f"{spec.slug} classifies into candidate labels: send labels.")
            result = provider.classify(model=model, text=item.text, labels=list(item.labels))
            values.append(result.value)
            tokens_in, tokens_out = tokens_in + result.tokens_in, tokens_out + result.tokens_out
    else:
        raise ProviderUnsupported(f"{spec.slug} cannot serve {task}.", provider=spec.backend, retryable=False)
    return Outcome(values=values, queue_ms=None, compute_ms=(time.perf_counter() - started) * 1000, units_out=0.0,
                   tokens_in=float(tokens_in), tokens_out=float(tokens_out))


def open_premium_stream(*, spec: ModelSpec, item: GenerationInput, tenant: Tenant | None = None) -> Any:
    provider = provider_for(provider_config(spec, tenant))
    return provider.chat_stream(model=spec.source, request=_checked_chat(item))


def _checked_chat(item: Any) -> GenerationInput:
    if not isinstance(item, GenerationInput):
        raise InvalidInput("Chat takes messages.")
    return item
