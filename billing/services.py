"""Money on the request path: reserve before a paid call, settle to the actual cost, release on failure.

Every change is one conditional UPDATE in PostgreSQL, so concurrent requests — in any number of
threads, processes or machines — cannot together spend past the limit: the row only moves when
`spent + reserved + amount <= limit` still holds at the moment of the write.
"""
from __future__ import annotations

from decimal import Decimal

from django.db.models import F, Q
from django.db.models.functions import Greatest, Least
from django.utils import timezone
from rest_framework import status

from billing.models import Budget, period_bounds
from config.errors import ApiError
from tenants.models import Tenant


class BudgetExceeded(ApiError):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_code = "budget_exceeded"


def budget_of(tenant: Tenant) -> Budget | None:
    """The tenant's budget, loaded with the API key (select_related): no query of its own."""
    try:
        return tenant.budget
    except Budget.DoesNotExist:
        return None


def roll_over(budget: Budget) -> Budget:
    """Start the next period when the current one has ended; only one concurrent caller does it."""
    now = timezone.now()
    if budget.period_end > now:
        return budget
    start, end = period_bounds(budget.period, budget.custom_days, now)
    # In-flight reservations stay: they settle into the new period.
    Budget.objects.filter(pk=budget.pk, period_end__lte=now).update(spent=Decimal("0"), period_start=start, period_end=end)
    budget.refresh_from_db()
    return budget


def reserve_budget(*, budget: Budget, amount: Decimal) -> bool:
    """Hold `amount` against the limit; False when it does not fit (nothing is held then)."""
    if amount <= 0:
        return True
    budget = roll_over(budget)
    held = Budget.objects.filter(pk=budget.pk).filter(Q(limit__gte=F("spent") + F("reserved") + amount)).update(
        reserved=F("reserved") + amount
    )
    return held == 1


def settle_budget(*, budget: Budget, reserved: Decimal, actual: Decimal) -> Decimal:
    """Replace the hold by the actual cost, never charging more than was held (the hold is the
    maximum the call could cost); returns what was charged."""
    charged = min(actual, reserved) if reserved > 0 else Decimal("0")
    Budget.objects.filter(pk=budget.pk).update(
        reserved=Greatest(F("reserved") - reserved, Decimal("0")), spent=Least(F("spent") + charged, F("limit"))
    )
    return charged


def release_budget(*, budget: Budget, reserved: Decimal) -> None:
    if reserved > 0:
        Budget.objects.filter(pk=budget.pk).update(reserved=Greatest(F("reserved") - reserved, Decimal("0")))


def exceeded_message(budget: Budget) -> str:
    return (
        f"The {budget.period} budget of {budget.limit:.4f} is used up "
        f"({budget.spent:.4f} spent, {budget.reserved:.4f} held by requests in flight); "
        f"it resets at {budget.period_end.isoformat(timespec='seconds')}."
    )


def budget_status(tenant: Tenant) -> dict[str, object] | None:
    """What the router (and the self-tuner) may weigh: how much is left, and how far the period is."""
    budget = budget_of(tenant)
    if budget is None:
        return None
    now = timezone.now()
    span = (budget.period_end - budget.period_start).total_seconds() or 1.0
    return {
        "limit": budget.limit,
        "spent": budget.spent,
        "reserved": budget.reserved,
        "remaining": budget.remaining,
        "remaining_fraction": float(budget.remaining / budget.limit) if budget.limit else 0.0,
        "period_progress": min(1.0, max(0.0, (now - budget.period_start).total_seconds() / span)),
        "period": budget.period,
        "period_start": budget.period_start,
        "period_end": budget.period_end,
        "at_limit": budget.at_limit,
    }
