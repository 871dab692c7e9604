"""Premium models through their providers' official SDKs: credentials, then the calls each task takes
(the provider's own API, or a prompt of routing.prompts)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db.models import Q

from inference.errors import InvalidInput
from inference.intent import DEFAULT_INTENTS
from inference.payloads import (
    AudioInput, Classification, ClassificationInput, Generation, GenerationInput, Intent, LanguageGuess, LanguageIdInput,
    Transcription, Translation, TranslationInput,
)
from registry.models import ModelSpec
from core.recent import configuration
from routing import prompts
from routing.attempts import Outcome
from routing.models import ProviderCredential
from routing.providers import Provider, ProviderConfig, ProviderError, ProviderResult, ProviderUnsupported, provider_for
from tenants.models import Tenant

ENV_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

T = TypeVar("T")


class MissingCredential(ProviderError):
    code = "provider_not_configured"


class MissingOption(ProviderError):
    """The spec lacks what its task needs (an intent model names the chat model that classifies its transcripts)."""

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


def run_premium(*, spec: ModelSpec, task: str, items: list[Any], tenant: Tenant | None = None) -> Outcome:
    """Every item of `task` answered by the premium model, with the tokens the provider billed summed
    over them. Speech is priced by the audio minute: its outcome reports no tokens, so its record keeps
    counting seconds."""
    provider = provider_for(provider_config(spec, tenant))
    started = time.perf_counter()
    if task == "embeddings":
        result = provider.embed(model=spec.source, texts=list(items))
        values, tokens_in, tokens_out = result.value, result.tokens_in, 0
    else:
        answer = _ANSWERS.get(task)
        if answer is None:
            raise ProviderUnsupported(f"{spec.slug} cannot serve {task}.", provider=spec.backend, retryable=False)
        values, tokens_in, tokens_out = [], 0, 0
        for item in items:
            result = answer(provider, spec, item)
            values.append(result.value)
            tokens_in, tokens_out = tokens_in + result.tokens_in, tokens_out + result.tokens_out
    by_tokens = task != "speech"
    return Outcome(values=values, queue_ms=None, compute_ms=(time.perf_counter() - started) * 1000, units_out=0.0,
                   tokens_in=float(tokens_in) if by_tokens else None, tokens_out=float(tokens_out) if by_tokens else None)


def judge_chat(*, spec: ModelSpec, item: GenerationInput, candidate: str, reference: str,
               tenant: Tenant | None = None) -> ProviderResult[float]:
    """How well `candidate` answers the chat `item` compared with `reference` (0..1), judged by the premium
    model of `spec` through the judge prompt: shadow evaluation's label for a local chat answer."""
    provider = provider_for(provider_config(spec, tenant))
    return prompts.judge_chat_answer(provider=provider, model=spec.source, messages=_checked_chat(item).messages,
                                     candidate=candidate, reference=reference)


def open_premium_stream(*, spec: ModelSpec, item: GenerationInput, tenant: Tenant | None = None) -> Any:
    provider = provider_for(provider_config(spec, tenant))
    # The stream's deadline is checked between pieces; a silent provider is bounded by the read timeout,
    # never longer than the deadline itself.
    timeout = min(provider.config.timeout, float(settings.MODELGATE_STREAM_TIMEOUT))
    return provider.chat_stream(model=spec.source, request=_checked_chat(item), timeout=timeout)


def _checked_chat(item: Any) -> GenerationInput:
    if not isinstance(item, GenerationInput):
        raise InvalidInput("Chat takes messages.")
    return item


# --- one item of each task -----------------------------------------------------------------------
def _generation(provider: Provider, spec: ModelSpec, item: Any) -> ProviderResult[Generation]:
    answer = provider.chat(model=spec.source, request=_checked_chat(item))
    return ProviderResult(value=answer, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out)


def _translation(provider: Provider, spec: ModelSpec, item: Any) -> ProviderResult[Translation]:
    item = _expect(item, TranslationInput, "Translation takes a text and a target language.")
    return prompts.translate(provider=provider, model=spec.source, text=item.text, source=item.source, target=item.target)


def _classification(provider: Provider, spec: ModelSpec, item: Any) -> ProviderResult[Classification]:
    item = _expect(item, ClassificationInput, "Classification takes a text.")
    if not item.labels:
        raise InvalidInput(f"{spec.slug} classifies into candidate labels: send labels.")
    return prompts.classify(provider=provider, model=spec.source, text=item.text, labels=list(item.labels))


def _language_id(provider: Provider, spec: ModelSpec, item: Any) -> ProviderResult[list[LanguageGuess]]:
    # One guess whatever top_k asked for: a prompted model names a language, it ranks none.
    item = _expect(item, LanguageIdInput, "Language identification takes text.")
    return prompts.identify_language(provider=provider, model=spec.source, text=item.text)


def _speech(provider: Provider, spec: ModelSpec, item: Any) -> ProviderResult[Transcription]:
    return provider.transcribe(model=spec.source, audio=_expect(item, AudioInput, "Speech recognition takes audio."))


def _intent(provider: Provider, spec: ModelSpec, item: Any) -> ProviderResult[Intent]:
    """The transcript of `spec.source` (a transcription model), classified by a prompt to the chat model of
    the option `chat_model` over the labels of the option `intents` (DEFAULT_INTENTS): the local
    whisper-intent backend's pipeline, with options of the same names (`top_k` 3, `empty_intent` "other")."""
    audio = _expect(item, AudioInput, "Intent recognition takes audio.")
    options = spec.options or {}
    chat_model = options.get("chat_model")
    intents = options.get("intents") or DEFAULT_INTENTS
    top_k = options.get("top_k", 3)
    # Checked before the audio is sent: a spec that cannot finish the job must not pay for its first half.
    if not isinstance(chat_model, str) or not chat_model.strip():
        raise MissingOption(f"{spec.slug}: set the option chat_model, the chat model that classifies the transcripts.",
                            provider=spec.backend)
    if not isinstance(intents, dict) or not all(isinstance(label, str) and label.strip() for label in intents):
        raise MissingOption(f"{spec.slug}: the option intents must map each intent label to its descriptions.",
                            provider=spec.backend)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise MissingOption(f"{spec.slug}: the option top_k must be a positive integer.", provider=spec.backend)
    heard = provider.transcribe(model=spec.source, audio=audio)
    transcription = heard.value
    if not transcription.text:
        # Nothing to classify. Unlike the local backend ("silence is an answer"), no confidence is claimed: an API
        # may drop the words of audio that was not silent, and the router's floor must see it, not a sure "other".
        empty = Intent(transcription, options.get("empty_intent", "other"), 0.0, [])
        return ProviderResult(value=empty, tokens_in=heard.tokens_in, tokens_out=heard.tokens_out)
    classified = prompts.classify(provider=provider, model=chat_model, text=transcription.text, labels=list(intents))
    scores = classified.value.scores
    chosen = next(score for score in scores if score.label == classified.value.predicted[0])
    return ProviderResult(
        value=Intent(transcription, chosen.label, chosen.score, scores[:top_k]),
        tokens_in=heard.tokens_in + classified.tokens_in,
        tokens_out=heard.tokens_out + classified.tokens_out,
    )


_ANSWERS: dict[str, Callable[[Provider, ModelSpec, Any], ProviderResult[Any]]] = {
    "generation": _generation,
    "translation": _translation,
    "classification": _classification,
    "language_id": _language_id,
    "speech": _speech,
    "intent": _intent,
}


def _expect(item: Any, kind: type[T], message: str) -> T:
    if not isinstance(item, kind):
        raise InvalidInput(message)
    return item
