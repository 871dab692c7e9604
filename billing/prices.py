"""What a request costs: the most it can cost (held before the call), what it did cost (settled
after), and the tokens it may use (held against tokens-per-minute limits). Prices are the model's
(registry.ModelSpec); the units are the request's."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from registry.models import ModelSpec

TOKEN_TASKS = {"generation", "embeddings"}


@dataclass
class Summary:
    """What a request asks for, in the units it is priced by; its record keeps the text's digest and
    preview (the full text only on opt-in)."""

    text: str
    unit: str
    units_in: float
    max_output_tokens: int | None = None  # what the request allows the model to write: its cost ceiling

    @classmethod
    def characters(cls, texts: Sequence[str]) -> Summary:
        return cls(text="\n".join(texts), unit="characters", units_in=float(sum(len(text) for text in texts)))

    def most_tokens_in(self) -> float:
        # A token is ~4 characters of English; counting one per 2 characters keeps the bound an upper one.
        return max(self.units_in if self.unit == "tokens" else 0, len(self.text) / 2)

    def most_tokens_out(self) -> int:
        return self.max_output_tokens or settings.MODELGATE_MAX_OUTPUT_TOKENS


def token_estimate(task: str, summary: Summary) -> int:
    """The most tokens a request can use, for tokens-per-minute limits (chat and embeddings; tasks
    priced by characters or audio are held by requests per minute and the budget)."""
    if task not in TOKEN_TASKS:
        return 0
    return int(summary.most_tokens_in()) + 1 + (summary.most_tokens_out() if task == "generation" else 0)


def estimate_cost(spec: ModelSpec, summary: Summary) -> Decimal:
    """The most an attempt can cost, reserved at admission and settled to actual_cost()."""
    if spec.is_local:
        return spec.price_per_compute_second * Decimal(str(settings.MODELGATE_REQUEST_TIMEOUT))
    return (
        spec.price_input_per_1k_tokens * Decimal(str(summary.most_tokens_in())) / 1000
        + spec.price_output_per_1k_tokens * Decimal(str(summary.most_tokens_out())) / 1000
        + spec.price_per_1k_characters * Decimal(str(summary.units_in if summary.unit == "characters" else 0)) / 1000
        + spec.price_per_audio_minute * Decimal(str(summary.units_in if summary.unit == "seconds" else 0)) / 60
    )


def actual_cost(spec: ModelSpec, summary: Summary, *, compute_ms: float, tokens_in: float | None,
                tokens_out: float | None) -> Decimal:
    """Actual cost from the units the model used: compute time for local models, usage for APIs
    (tokens as the provider reported them, characters or audio seconds as the request carried)."""
    if spec.is_local:
        return spec.price_per_compute_second * Decimal(str(round(compute_ms / 1000, 6)))
    cost = Decimal("0")
    if tokens_in is not None:
        cost += spec.price_input_per_1k_tokens * Decimal(str(tokens_in)) / 1000
        cost += spec.price_output_per_1k_tokens * Decimal(str(tokens_out or 0)) / 1000
    if summary.unit == "characters":
        cost += spec.price_per_1k_characters * Decimal(str(summary.units_in)) / 1000
    if summary.unit == "seconds":
        cost += spec.price_per_audio_minute * Decimal(str(summary.units_in)) / 60
    return cost
