"""The task API. Views parse and authorize; the router decides, runs and records."""
from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import parse
from core.errors import NotFound
from inference.audio import SAMPLE_RATE, decode_audio
from inference.errors import InvalidInput
from inference.payloads import (
    AudioInput,
    ChatMessage,
    ClassificationInput,
    GenerationInput,
    LanguageIdInput,
    RerankInput,
    TranslationInput,
)
from registry.models import ModelSpec
from routing import serializers as s
from routing.models import InferenceRecord, QualitySignal
from billing.prices import Summary
from routing.router import InputRejected, NoModelAvailable, Routed, plan, route
from routing.streaming import stream_chat
from tenants.models import Scope

FEEDBACK_AGREEMENT = {1: 1.0, 0: 0.5, -1: 0.0}  # good, neutral, bad

PRICE_FIELDS = [
    "price_input_per_1k_tokens", "price_output_per_1k_tokens", "price_per_1k_characters",
    "price_per_audio_minute", "price_per_compute_second",
]


def meta(routed: Routed) -> dict[str, Any]:
    """What every answer of our own endpoints carries about how it was produced."""
    record = routed.record
    return {
        "request_id": record.request_id,
        "inference_id": str(record.id),
        "model": record.model_slug,
        "tier": record.tier,
        "latency_ms": round(record.latency_ms or 0, 2),
        "cost": f"{routed.cost:f}",
        "cached": record.cached,
        "escalated": len(routed.attempts) > 1,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def with_headers(response: HttpResponse, routed: Routed) -> HttpResponse:
    """OpenAI-compatible endpoints keep the standard body; our facts travel in headers."""
    for name, value in meta(routed).items():
        response[f"x-modelgate-{name.replace('_', '-')}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return response


class TranslateView(APIView):
    required_scope = Scope.TRANSLATE

    @extend_schema(request=s.TranslateSerializer, responses={200: OpenApiTypes.OBJECT}, summary="Translate text; the source language is detected when absent")
    def post(self, request: Request) -> Response:
        data = parse(s.TranslateSerializer, request)
        texts, sources = data["texts"], [data.get("source")] * len(data["texts"])
        detected = None
        if data.get("source") is None:
            detected = route(
                key=request.auth, task="language_id", items=[LanguageIdInput(text=t, top_k=2) for t in texts],
                summary=Summary.characters(texts), request_id=request.request_id,
            )
            sources = [guesses[0].language for guesses in detected.values]
        items = [TranslationInput(text=t, target=data["target"], source=src) for t, src in zip(texts, sources)]
        routed = route(
            key=request.auth, task="translation", items=items, summary=Summary.characters(texts),
            request_id=request.request_id, model=data["model"], units_out=lambda v: float(sum(len(x.text) for x in v)),
        )
        results = [
            {"text": t.text, "source": t.source, "target": t.target,
             "confidence": None if t.score is None else round(float(np.exp(t.score)), 4),
             "source_detected": detected is not None, "model": answered_by}
            for t, answered_by in zip(routed.values, routed.item_models)
        ]
        return Response({"results": results, **meta(routed)})


class DetectLanguageView(APIView):
    required_scope = Scope.DETECT_LANGUAGE

    @extend_schema(request=s.DetectLanguageSerializer, responses={200: OpenApiTypes.OBJECT}, summary="Identify the language of texts")
    def post(self, request: Request) -> Response:
        data = parse(s.DetectLanguageSerializer, request)
        # At least two guesses from the model: the margin between them is what the learned router reads.
        routed = route(
            key=request.auth, task="language_id", items=[LanguageIdInput(text=t, top_k=max(2, data["top_k"])) for t in data["texts"]],
            summary=Summary.characters(data["texts"]), request_id=request.request_id, model=data["model"],
            units_out=lambda v: float(len(v)),
        )
        results = [
            {"language": guesses[0].language, "probability": _rounded(guesses[0].probability),
             "candidates": [{"language": g.language, "probability": _rounded(g.probability)} for g in guesses[: data["top_k"]]],
             "model": answered_by}
            for guesses, answered_by in zip(routed.values, routed.item_models)
        ]
        return Response({"results": results, **meta(routed)})


class ClassifyView(APIView):
    required_scope = Scope.CLASSIFY

    @extend_schema(request=s.ClassifySerializer, responses={200: OpenApiTypes.OBJECT}, summary="Classify texts; candidate labels turn on zero-shot")
    def post(self, request: Request) -> Response:
        data = parse(s.ClassifySerializer, request)
        labels = tuple(data["labels"]) if data.get("labels") else None
        zero_shot = (lambda spec: spec.backend == "zero-shot-embeddings" or not spec.is_local) if labels else (
            lambda spec: spec.backend != "zero-shot-embeddings" or bool(spec.options.get("labels"))
        )
        if labels is None and data["model"] == "auto":
            # Without a classifier of fixed labels, only candidate labels make the request answerable: the
            # client's to fix (a 400 naming the field), not an outage to retry.
            try:
                plan(key=request.auth, task="classification", items=[], model="auto", accept=zero_shot)
            except NoModelAvailable:
                raise ValidationError({"labels": [
                    "No classifier with fixed labels is available to this key: give 2 to 100 candidate labels."
                ]}) from None
        routed = route(
            key=request.auth, task="classification", items=[ClassificationInput(text=t, labels=labels) for t in data["texts"]],
            summary=Summary.characters(data["texts"]), request_id=request.request_id, model=data["model"],
            units_out=lambda v: float(len(v)), accept=zero_shot,
        )
        results = [
            {"labels": [{"label": x.label, "score": round(x.score, 4)} for x in c.scores], "predicted": c.predicted,
             "multi_label": c.multi_label, "model": answered_by}
            for c, answered_by in zip(routed.values, routed.item_models)
        ]
        return Response({"results": results, **meta(routed)})


class RerankView(APIView):
    required_scope = Scope.RERANK

    @extend_schema(request=s.RerankSerializer, responses={200: OpenApiTypes.OBJECT}, summary="Order documents by relevance to a query")
    def post(self, request: Request) -> Response:
        data = parse(s.RerankSerializer, request)
        documents = data["documents"]
        routed = route(
            key=request.auth, task="rerank", items=[RerankInput(query=data["query"], documents=tuple(documents))],
            summary=Summary.characters([data["query"], *documents]), request_id=request.request_id, model=data["model"],
            units_out=lambda v: float(len(documents)),
        )
        scores = routed.values[0].scores
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[: data.get("top_n") or len(documents)]
        results = [{"index": i, "score": round(scores[i], 6), "document": documents[i]} for i in order]
        return Response({"results": results, **meta(routed)})


class EmbeddingsView(APIView):
    """OpenAI-compatible: the official SDKs work with Modelgate as their base URL."""

    required_scope = Scope.EMBEDDINGS

    @extend_schema(request=s.EmbeddingsSerializer, responses={200: OpenApiTypes.OBJECT}, summary="Create embeddings (OpenAI-compatible)")
    def post(self, request: Request) -> Response:
        data = parse(s.EmbeddingsSerializer, request)
        texts = data["input"]
        routed = route(
            key=request.auth, task="embeddings", items=texts, summary=Summary.characters(texts),
            request_id=request.request_id, model=data["model"], units_out=lambda v: float(len(v)),
            tokens_in=lambda v: float(sum(e.tokens for e in v)),
        )
        tokens = int(routed.record.units_in)

        def encode(vector: np.ndarray) -> Any:
            if data["encoding_format"] == "base64":
                return base64.b64encode(vector.astype("<f4").tobytes()).decode()
            return vector.tolist()

        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(e.vector)} for i, e in enumerate(routed.values)],
            "model": routed.record.model_slug,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return with_headers(Response(body), routed)


def generation_input(data: dict[str, Any]) -> GenerationInput:
    messages = tuple(
        ChatMessage(role="system" if m["role"] == "developer" else m["role"], content=m["content"]) for m in data["messages"]
    )
    return GenerationInput(
        messages=messages, max_tokens=data["limit"], temperature=data["temperature"], stop=tuple(data.get("stop") or ())
    )


class ChatCompletionsView(APIView):
    required_scope = Scope.CHAT

    @extend_schema(request=s.ChatCompletionSerializer, responses={200: OpenApiTypes.OBJECT}, summary="Chat completions (OpenAI-compatible, streaming with SSE)")
    def post(self, request: Request) -> HttpResponse:
        data = parse(s.ChatCompletionSerializer, request)
        item = generation_input(data)
        text = "\n".join(f"{m.role}: {m.content}" for m in item.messages)
        summary = Summary(text=text, unit="tokens", units_in=float(len(text.split())), max_output_tokens=data["limit"])
        if data["stream"]:
            include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
            chunks, headers = stream_chat(key=request.auth, item=item, summary=summary, request_id=request.request_id,
                                          model=data["model"], include_usage=include_usage)
            response = StreamingHttpResponse(chunks, content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # let proxies pass every chunk at once
            for name, value in headers.items():
                response[name] = value
            return response
        routed = route(
            key=request.auth, task="generation", items=[item], summary=summary, request_id=request.request_id,
            model=data["model"], units_out=lambda v: float(v[0].tokens_out),
        )
        answer = routed.values[0]
        body = {
            "id": f"chatcmpl-{routed.record.id.hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": routed.record.model_slug,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": answer.tokens_in, "completion_tokens": answer.tokens_out,
                      "total_tokens": answer.tokens_in + answer.tokens_out},
        }
        return with_headers(Response(body), routed)


def read_audio(upload: Any) -> tuple[np.ndarray, float]:
    try:
        samples = decode_audio(upload.read(), max_seconds=settings.MODELGATE_AUDIO_MAX_SECONDS)
    except InvalidInput as exc:
        raise InputRejected(str(exc), code="invalid_audio") from None
    return samples, samples.size / SAMPLE_RATE


class TranscriptionsView(APIView):
    required_scope = Scope.AUDIO

    @extend_schema(
        request={"multipart/form-data": s.AudioSerializer},
        responses={200: OpenApiTypes.OBJECT},
        summary="Transcribe audio (OpenAI-compatible multipart)",
    )
    def post(self, request: Request) -> HttpResponse:
        data = parse(s.AudioSerializer, request)
        samples, seconds = read_audio(data["file"])
        routed = route(
            key=request.auth, task="speech", items=[AudioInput(samples=samples, language=data.get("language"))],
            summary=Summary(text=f"audio {data['file'].name} {seconds:.1f}s", unit="seconds", units_in=seconds),
            request_id=request.request_id, model=data["model"], units_out=lambda v: float(len(v[0].text)),
        )
        result = routed.values[0]
        if data["response_format"] == "text":
            return with_headers(HttpResponse(result.text, content_type="text/plain; charset=utf-8"), routed)
        body: dict[str, Any] = {"text": result.text}
        if data["response_format"] == "verbose_json":
            body.update(
                task="transcribe", language=result.language, duration=round(result.duration, 3),
                segments=[{"id": i, "start": seg.start, "end": seg.end, "text": seg.text, "avg_logprob": seg.avg_logprob}
                          for i, seg in enumerate(result.segments)],
            )
        return with_headers(Response(body), routed)


class IntentView(APIView):
    required_scope = Scope.AUDIO

    @extend_schema(request={"multipart/form-data": s.IntentSerializer}, responses={200: OpenApiTypes.OBJECT}, summary="Audio in: transcription, intent, confidence")
    def post(self, request: Request) -> Response:
        data = parse(s.IntentSerializer, request)
        samples, seconds = read_audio(data["file"])
        routed = route(
            key=request.auth, task="intent", items=[AudioInput(samples=samples)],
            summary=Summary(text=f"audio {data['file'].name} {seconds:.1f}s", unit="seconds", units_in=seconds),
            request_id=request.request_id, model=data["model"], units_out=lambda v: 1.0,
        )
        result = routed.values[0]
        return Response({
            "transcription": {"text": result.transcription.text, "language": result.transcription.language,
                              "duration": round(result.transcription.duration, 3)},
            "intent": result.intent,
            "confidence": round(result.confidence, 4),
            "top_k": [{"intent": x.label, "score": round(x.score, 4)} for x in result.top_k[: data["top_k"]]],
            **meta(routed),
        })


class ModelsView(APIView):
    """OpenAI-style list of the models this key may use, with task, tier and prices."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Models this key may use")
    def get(self, request: Request) -> Response:
        key = request.auth
        specs = [spec for spec in ModelSpec.objects.filter(enabled=True) if key.may_use(spec.slug, is_local=spec.is_local)]
        data = [
            {"id": spec.slug, "object": "model", "created": int(spec.created_at.timestamp()), "owned_by": "modelgate",
             "name": spec.display_name, "task": spec.task, "tier": spec.tier,
             "pricing": {field.removeprefix("price_"): str(getattr(spec, field)) for field in PRICE_FIELDS}}
            for spec in specs
        ]
        return Response({"object": "list", "data": data})


class InferenceDetailView(generics.RetrieveAPIView):
    required_scope = Scope.INFERENCES
    serializer_class = s.InferenceRecordSerializer
    queryset = InferenceRecord.objects.none()
    lookup_field = "pk"

    def get_queryset(self) -> QuerySet[InferenceRecord]:
        # Scoped lookup: another tenant's record is as missing as one that never existed.
        return InferenceRecord.objects.filter(tenant=self.request.auth.tenant)


class FeedbackView(APIView):
    required_scope = Scope.INFERENCES

    @extend_schema(request=s.FeedbackSerializer, responses={200: OpenApiTypes.OBJECT}, summary="Rate an answer: a quality signal the routing tuner weighs")
    def post(self, request: Request) -> Response:
        data = parse(s.FeedbackSerializer, request)
        # The answer the caller saw is the request's last completed attempt.
        record = (
            InferenceRecord.objects.filter(tenant=request.auth.tenant, request_id=data["request_id"],
                                           status__in=[InferenceRecord.Status.OK])
            .order_by("-created_at").first()
        )
        if record is None:
            raise NotFound(f"No answered request {data['request_id']!r}.")
        with transaction.atomic():
            InferenceRecord.objects.filter(pk=record.pk).update(
                feedback_score=data["score"], feedback_comment=data["comment"], feedback_at=timezone.now()
            )
            # Feedback is a quality signal of its own source: the tuner weighs it with the others.
            QualitySignal.objects.update_or_create(
                record=record, source=QualitySignal.Source.FEEDBACK,
                defaults={"agreement": FEEDBACK_AGREEMENT[data["score"]], "detail": data["comment"][:300],
                          "created_at": timezone.now()},
            )
        return Response({"inference_id": str(record.id), "request_id": record.request_id, "score": data["score"]})
