"""Chat completions streamed as server-sent events in OpenAI's chunk format, recorded like any request."""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from core.db import update_rows
from inference.errors import InferenceError
from inference.payloads import Generation, GenerationInput
from registry.services import ensure_prepared, get_pool
from routing.models import InferenceRecord
from billing.prices import Summary, actual_cost, token_estimate
from billing.ratelimits import TokenCharge, take_tokens
from billing.services import Hold
from routing.attempts import Outcome, charge_failed, release, settle, tokens_used
from routing.router import Walk, plan
from tenants.models import ApiKey

logger = logging.getLogger("modelgate.routing")

# How often a stream writes how far it got onto its pending record: what the reaper charges when the
# worker dies mid-stream (the provider's tokens were spent all the same).
PROGRESS_SECONDS = 5.0


def _open(spec: Any, item: GenerationInput, tenant: Any) -> Any:
    """A stream of text pieces whose `.result` is the final Generation (local or premium)."""
    if spec.is_local:
        ensure_prepared(spec)
        return get_pool().stream(spec.to_config(), item)
    from routing.premium import open_premium_stream

    return open_premium_stream(spec=spec, item=item, tenant=tenant)


def stream_chat(
    *, key: ApiKey, item: GenerationInput, summary: Summary, request_id: str, model: str, include_usage: bool
) -> tuple[Iterator[bytes], dict[str, str]]:
    """Choose and open a model before the response starts, through the same candidate loop as a plain
    request (routing.router.Walk), so errors are still plain HTTP errors and a candidate that fails or
    refuses the input falls back alike. Once text has gone out there is no fallback."""
    walk = Walk(key=key, task="generation", summary=summary, request_id=request_id, model=model,
                plan=plan(key=key, task="generation", items=[item], model=model), reason_suffix="; streamed")
    charge = take_tokens(key, token_estimate("generation", summary))
    try:
        for spec, held, record, may_pass_on in walk:
            try:
                stream = _open(spec, item, key.tenant)
            except BaseException as exc:
                walk.failed(exc, spec=spec, held=held, record=record, may_pass_on=may_pass_on)
                continue
            headers = {
                "x-modelgate-request-id": request_id, "x-modelgate-inference-id": str(record.id),
                "x-modelgate-model": spec.slug, "x-modelgate-tier": spec.tier,
            }
            events = _events(stream, record=record, spec=spec, summary=summary, include_usage=include_usage,
                             held=held, charge=charge)
            return events, headers
        raise walk.exhausted()
    except BaseException:
        if charge is not None:
            charge.true_up(0)  # nothing was streamed
        raise


def _events(stream: Any, *, record: InferenceRecord, spec: Any, summary: Summary, include_usage: bool,
            held: Hold, charge: TokenCharge | None) -> Iterator[bytes]:
    created = int(time.time())
    base = {"id": f"chatcmpl-{record.id.hex}", "object": "chat.completion.chunk", "created": created, "model": spec.slug}

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

    started = time.perf_counter()
    deadline = started + settings.MODELGATE_STREAM_TIMEOUT
    saved_at = started
    streamed: list[str] = []
    finished = False
    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        result: Generation | None = None
        for piece in stream:
            if piece:
                streamed.append(piece)
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            now = time.perf_counter()
            if now >= deadline:
                break
            if now - saved_at >= PROGRESS_SECONDS:
                _save_progress(record, spec=spec, summary=summary, text="".join(streamed),
                               compute_ms=(now - started) * 1000)
                saved_at = now
        else:
            result = stream.result
        reason_suffix = ""
        if result is None:
            # The deadline: stop the upstream and charge what was streamed. A provider reports usage only
            # at the end of a stream, so it is estimated from the text, as for a server that reports none.
            stream.close()
            result = _cut_short(summary, "".join(streamed))
            reason_suffix = (f"; stopped at the stream deadline ({settings.MODELGATE_STREAM_TIMEOUT} s), "
                             "usage estimated from the streamed text")
        outcome = Outcome(values=[result], queue_ms=None, compute_ms=(time.perf_counter() - started) * 1000,
                          units_out=float(result.tokens_out), tokens_in=None if spec.is_local else float(result.tokens_in),
                          tokens_out=None if spec.is_local else float(result.tokens_out))
        cost = actual_cost(spec, summary, compute_ms=outcome.compute_ms, tokens_in=outcome.tokens_in,
                           tokens_out=outcome.tokens_out)
        settle(held, record, status=InferenceRecord.Status.OK, values=[result], outcome=outcome, cost=cost,
               reason_suffix=reason_suffix)
        finished = True
        yield event([{"index": 0, "delta": {}, "finish_reason": result.finish_reason}])
        if include_usage:
            usage = {"prompt_tokens": result.tokens_in, "completion_tokens": result.tokens_out,
                     "total_tokens": result.tokens_in + result.tokens_out}
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"
    except GeneratorExit:
        # The client went away: stop the model and say so in the record.
        stream.close()
        if not finished:
            _close_unfinished(held, record, spec=spec, summary=summary, streamed=streamed, code="client_disconnected",
                              message="The client closed the stream.")
        raise
    except (InferenceError, OSError) as exc:
        stream.close()
        code = getattr(exc, "code", "error")
        if not finished:
            _close_unfinished(held, record, spec=spec, summary=summary, streamed=streamed, code=code, message=str(exc))
        # The model's own text (an upstream body, a path) stays in the record; the client gets the code.
        message = f"{spec.slug} failed mid-stream ({code}); the text before this event is all there is."
        error = {"error": {"code": code, "message": message, "request_id": record.request_id}}
        yield f"data: {json.dumps(error)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        if charge is not None:
            charge.true_up(tokens_used(record))


def _close_unfinished(held: Hold, record: InferenceRecord, *, spec: Any, summary: Summary, streamed: list[str],
                      code: str, message: str) -> None:
    """Close the record of a stream that ended without its answer (the client left, the model failed).
    Text a provider had already written is charged, with usage estimated from it: the provider bills those
    tokens whatever became of the stream. A local model's unfinished stream costs nothing."""
    if streamed and not spec.is_local:
        cut = _cut_short(summary, "".join(streamed))
        cost = actual_cost(spec, summary, compute_ms=0.0, tokens_in=cut.tokens_in, tokens_out=cut.tokens_out)
        charge_failed(held, record=record, cost=cost, tokens_in=float(cut.tokens_in), tokens_out=float(cut.tokens_out),
                      status=InferenceRecord.Status.ERROR, code=code,
                      message=f"{message} Charged for the text streamed until then (estimated usage).")
    else:
        release(held, record=record, status=InferenceRecord.Status.ERROR, code=code, message=message)


def _estimated_tokens(text: str) -> int:
    # The providers' own estimate when a server reports no usage (routing.providers): 4 characters a token.
    return math.ceil(len(text) / 4)


def _cut_short(summary: Summary, text: str) -> Generation:
    """The answer of a stream stopped at its deadline: what was streamed, with estimated usage."""
    return Generation(text=text, tokens_in=_estimated_tokens(summary.text), tokens_out=_estimated_tokens(text),
                      finish_reason="length")


def _save_progress(record: InferenceRecord, *, spec: Any, summary: Summary, text: str, compute_ms: float) -> None:
    """Write how far the stream got on its pending record (a record completed meanwhile is left alone).
    A pending record with compute_ms set is a stream under way: the reaper waits for the stream deadline
    before closing it, and then charges these tokens. A failed write only loses that, never the stream."""
    values: dict[str, object] = {"units_out": float(_estimated_tokens(text)), "compute_ms": compute_ms}
    if not spec.is_local:  # a local model is charged its compute time; its record keeps the request's count
        values |= {"unit": "tokens", "units_in": float(_estimated_tokens(summary.text))}
    try:
        update_rows(InferenceRecord.objects.filter(pk=record.pk, status=InferenceRecord.Status.PENDING), values)
    except DatabaseError as exc:
        logger.warning("stream progress not saved", extra={"record": str(record.id), "error": str(exc)})
