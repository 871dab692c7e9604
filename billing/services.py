"""Money on the request path: reserve before a paid call, settle to the actual cost, release on failure.

Every change is a conditional UPDATE in PostgreSQL, so concurrent requests — in any number of
threads, processes or machines — cannot together spend past the limit: the row only moves when
`spent + reserved + amount <= limit` still holds at the moment of the write. Sub-limits (per API key,
per model) move in the same transaction as the budget: the hold is taken on all of them or on none.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Model, Q, QuerySet
from django.db.models.functions import Greatest
from django.utils import timezone
from rest_framework import status

from billing.models import Budget, EvaluationAllowance, SpendLimit, period_bounds
from core.db import insert_row, insert_statement, prepared_cursor, update_rows, update_statement
from core.errors import ApiError
from core.recent import configuration
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


@dataclass(frozen=True)
class Hold:
    """Money held for one attempt: on the budget and on each sub-limit that applies to it."""

    budget: Budget | None
    amount: Decimal
    sub_limits: tuple[int, ...] = ()

    @property
    def held(self) -> bool:
        return self.budget is not None and self.amount > 0


@dataclass(frozen=True)
class Refusal:
    """Why a hold was not taken. A model's own sub-limit refuses only that model; the budget or a
    key's sub-limit refuses the request (unless the budget serves local models at the limit)."""

    message: str
    model_only: bool = False
    by_budget: bool = False  # the budget itself is full, not only a sub-limit


def roll_over(budget: Budget) -> Budget:
    """Start the next period when the current one has ended; only one concurrent caller does it."""
    now = timezone.now()
    if budget.period_end > now:
        return budget
    start, end = period_bounds(budget.period, budget.custom_days, now)
    # In-flight reservations stay: they settle into the new period.
    with transaction.atomic():
        # Sub-limit rows are locked before the budget row, in every statement here: no deadlocks.
        list(SpendLimit.objects.select_for_update().filter(budget_id=budget.pk).order_by("pk").values_list("pk", flat=True))
        moved = Budget.objects.filter(pk=budget.pk, period_end__lte=now).update(
            spent=Decimal("0"), period_start=start, period_end=end
        )
        if moved:
            SpendLimit.objects.filter(budget_id=budget.pk).update(spent=Decimal("0"))
    budget.refresh_from_db()
    return budget


def sub_limits_for(budget: Budget, *, key_id: int | None, model_slug: str) -> tuple[int, ...]:
    """The sub-limits an attempt by this key on this model counts against (cached like routing
    configuration: a budget without sub-limits costs no query after the first request)."""
    limits = configuration.remember(
        ("sub-limits", budget.pk),
        lambda: tuple(SpendLimit.objects.filter(budget_id=budget.pk).values_list("pk", "api_key_id", "model_slug")),
    )
    return tuple(pk for pk, api_key_id, slug in limits if (api_key_id and api_key_id == key_id) or (slug and slug == model_slug))


# One statement holds on the sub-limits and then — only if every one of them (that still exists) had
# room — on the budget. Every money statement locks sub-limit rows before the budget row. `seen` is the
# budget as this statement found it: the figures a refusal reports (the copy cached with the key may be
# seconds old and say nothing was spent).
_HOLD = """
WITH seen AS (
    SELECT spent, reserved, "limit" FROM billing_budget WHERE id = %s
), locked AS (
    SELECT id FROM billing_spendlimit WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE
), subs AS (
    UPDATE billing_spendlimit SET reserved = reserved + %s
     WHERE id IN (SELECT id FROM locked) AND "limit" >= spent + reserved + %s
    RETURNING id
), budget AS (
    UPDATE billing_budget SET reserved = reserved + %s
     WHERE id = %s AND "limit" >= spent + reserved + %s
       AND (SELECT count(*) FROM subs) = (SELECT count(*) FROM billing_spendlimit WHERE id = ANY(%s::bigint[]))
    RETURNING id
)
"""
_HOLD_RESULT = ("(SELECT count(*) FROM budget), ARRAY(SELECT id FROM subs), "
                "(SELECT spent FROM seen), (SELECT reserved FROM seen), (SELECT \"limit\" FROM seen)")


def reserve(budget: Budget, amount: Decimal, *, key_id: int | None = None, model_slug: str = "",
            insert: Model | None = None) -> Hold | Refusal:
    """Hold `amount` against the budget and its applicable sub-limits, all or nothing, in one statement.

    `insert` (an unsaved row, e.g. the attempt's pending record) is written by that same statement
    whatever the outcome: one round trip and one commit for both, and never a hold without its record.
    """
    if amount <= 0:
        if insert is not None:
            insert_row(insert)
        return Hold(budget=budget, amount=Decimal("0"))
    budget = roll_over(budget)
    subs = list(sub_limits_for(budget, key_id=key_id, model_slug=model_slug))
    params = [budget.pk, subs, amount, amount, amount, budget.pk, amount, subs]
    with prepared_cursor() as cursor:
        if insert is None:
            cursor.execute(f"{_HOLD} SELECT {_HOLD_RESULT}", params)
        else:
            insert_sql, insert_params = insert_statement(insert)
            cursor.execute(f"{_HOLD} {insert_sql} RETURNING {_HOLD_RESULT}", params + insert_params)
            insert._state.adding, insert._state.db = False, connection.alias
        held, moved, spent, reserved, limit = cursor.fetchone()
    if held:
        return Hold(budget=budget, amount=amount, sub_limits=tuple(subs))
    if moved:
        # The sub-limits had room but the budget had not: give their share back.
        SpendLimit.objects.filter(pk__in=moved).update(reserved=Greatest(F("reserved") - amount, Decimal("0")))
    refusal = _sub_limit_refusal(tuple(pk for pk in subs if pk not in moved), amount)
    seen = Figures(spent=spent, reserved=reserved, limit=limit) if limit is not None else Figures.of(budget)
    return refusal or Refusal(exceeded_message(budget, seen, amount), by_budget=True)


def _sub_limit_refusal(subs: tuple[int, ...], amount: Decimal) -> Refusal | None:
    full = [limit for limit in SpendLimit.objects.filter(pk__in=subs).select_related("api_key", "budget")
            if limit.spent + limit.reserved + amount > limit.limit] if subs else []
    if not full:  # every sub-limit had room (or is gone): the budget itself refused
        return None
    limit = full[0]
    subject = f"API key {limit.api_key.prefix}" if limit.api_key_id else f"model {limit.model_slug}"
    return Refusal(
        f"The {limit.budget.period} spending limit of {limit.limit:.4f} for {subject} is used up "
        f"({limit.spent:.4f} spent, {limit.reserved:.4f} held); it resets at "
        f"{limit.budget.period_end.isoformat(timespec='seconds')}.",
        model_only=all(not limit.api_key_id for limit in full),
    )


# Settlement and release are guarded by the record: the hold moves back only while its record is still
# pending, so a request that outlived the reaper (which already freed its hold) cannot free it twice; it
# is still charged what it used, unless the reaper charged its record already (a stream's streamed tokens).
# Lock order as everywhere: the record, the sub-limits, then the budget.
_PENDING = """
WITH pending AS ({pending}), locked AS (
    SELECT id FROM billing_spendlimit WHERE id = ANY(%s::bigint[]) AND EXISTS (SELECT 1 FROM pending) IS NOT NULL
     ORDER BY id FOR UPDATE
), subs AS (
    UPDATE billing_spendlimit
       SET reserved = GREATEST(reserved - CASE WHEN EXISTS (SELECT 1 FROM pending WHERE open) THEN %s ELSE 0 END, 0),
           spent = LEAST(spent + CASE WHEN EXISTS (SELECT 1 FROM pending WHERE chargeable) THEN %s ELSE 0 END, "limit")
     WHERE id IN (SELECT id FROM locked)
    RETURNING id
), budget AS (
    UPDATE billing_budget
       SET reserved = GREATEST(reserved - CASE WHEN EXISTS (SELECT 1 FROM pending WHERE open) THEN %s ELSE 0 END, 0),
           spent = LEAST(spent + CASE WHEN EXISTS (SELECT 1 FROM pending WHERE chargeable) THEN %s ELSE 0 END, "limit"), updated_at = now()
     WHERE id = %s AND (SELECT count(*) FROM subs) >= 0
    RETURNING spent, "limit", period_start
)
"""
_RECORD_PENDING = ("SELECT id, status = 'pending' AS open, (status = 'pending' OR cost = 0) AS chargeable "
                   "FROM routing_inferencerecord WHERE id = %s FOR UPDATE")
_NO_RECORD = "SELECT 1 AS id, true AS open, true AS chargeable"
_SETTLE_RESULT = ("(SELECT spent FROM budget), (SELECT \"limit\" FROM budget), (SELECT period_start FROM budget), "
                  "EXISTS (SELECT 1 FROM pending WHERE chargeable)")


def _move(hold: Hold, charged: Decimal, record_id: object,
          update: tuple[QuerySet, dict[str, object]] | None) -> tuple[object, ...] | None:
    params = [list(hold.sub_limits), hold.amount, charged, hold.amount, charged, hold.budget.pk]
    if record_id is None:
        head = _PENDING.format(pending=_NO_RECORD)
    else:
        head, params = _PENDING.format(pending=_RECORD_PENDING), [record_id, *params]
    if update is not None:
        # The row's UPDATE waits for the money (its WHERE reads the budget step), so that the pending
        # check above sees the record before this statement changes it.
        update_sql, update_params = update_statement(*update)
        if " WHERE " not in update_sql or " OR " in update_sql.split(" WHERE ", 1)[1]:
            raise ValueError("settle/release updates rows chosen by a plain AND filter")
        head += f", record AS ({update_sql} AND (SELECT count(*) FROM budget) >= 0 RETURNING 1)"
        params += update_params
    with prepared_cursor() as cursor:
        cursor.execute(f"{head} SELECT {_SETTLE_RESULT}", params)
        return cursor.fetchone()


def settle(hold: Hold, actual: Decimal, *, record_id: object = None,
           update: tuple[QuerySet, dict[str, object]] | None = None) -> Decimal:
    """Replace the hold by the actual cost, never charging more than was held (the hold is the
    maximum the call could cost); returns what was charged. `update` (a queryset and its new values,
    e.g. the record's completion) is applied by the same statement; `record_id` names the pending
    record the hold belongs to (without it, the hold is freed unconditionally). A crossed alert
    threshold raises its alert once the surrounding transaction, if any, commits."""
    if not hold.held:
        if update is not None:
            update_rows(*update)
        return Decimal("0")
    charged = min(actual, hold.amount)
    row = _move(hold, charged, record_id, update)
    if row is not None and not row[3]:
        return Decimal("0")  # the reaper charged the record meanwhile: nothing moved
    if row is not None and row[0] is not None and charged > 0:
        spent, limit, period_start, _ = row
        crossed = crossed_thresholds(hold.budget.alert_thresholds, before=spent - charged, after=spent, limit=limit)
        if crossed:
            from billing import alerts

            budget_id, tenant_id = hold.budget.pk, hold.budget.tenant_id
            transaction.on_commit(lambda: alerts.raise_alerts(
                budget_id=budget_id, tenant_id=tenant_id, period_start=period_start, thresholds=crossed,
                spent=spent, limit=limit,
            ))
    return charged


def release(hold: Hold, *, record_id: object = None, update: tuple[QuerySet, dict[str, object]] | None = None) -> None:
    """Free the hold; `record_id` and `update` as for settle()."""
    if not hold.held:
        if update is not None:
            update_rows(*update)
        return
    _move(hold, Decimal("0"), record_id, update)


def release_reserved(budget: Budget, amount: Decimal, *, key_id: int | None, model_slug: str) -> None:
    """Free a hold whose request is gone (the reaper): its sub-limits are found again from the
    key and model it was taken for."""
    release(_found_hold(budget, amount, key_id=key_id, model_slug=model_slug))


def settle_reserved(budget: Budget, amount: Decimal, actual: Decimal, *, key_id: int | None, model_slug: str) -> Decimal:
    """Settle a hold whose request is gone at what it is known to have used (the reaper, for a stream
    whose worker died); returns what was charged (never more than the hold)."""
    return settle(_found_hold(budget, amount, key_id=key_id, model_slug=model_slug), actual)


def _found_hold(budget: Budget, amount: Decimal, *, key_id: int | None, model_slug: str) -> Hold:
    covers = Q(pk__in=[])
    if key_id is not None:
        covers |= Q(api_key_id=key_id)
    if model_slug:
        covers |= Q(model_slug=model_slug)
    subs = tuple(SpendLimit.objects.filter(budget_id=budget.pk).filter(covers).values_list("pk", flat=True))
    return Hold(budget=budget, amount=amount, sub_limits=subs)


def crossed_thresholds(thresholds: list[int], *, before: Decimal, after: Decimal, limit: Decimal) -> list[int]:
    """The alert thresholds (percent of the limit) that the move from `before` to `after` crossed."""
    if limit <= 0:
        return []
    return sorted(t for t in set(thresholds) if before * 100 < t * limit <= after * 100)


@dataclass(frozen=True)
class Figures:
    """A budget's money as one statement saw it."""

    spent: Decimal
    reserved: Decimal
    limit: Decimal

    @classmethod
    def of(cls, budget: Budget) -> Figures:
        return cls(spent=budget.spent, reserved=budget.reserved, limit=budget.limit)


def exceeded_message(budget: Budget, seen: Figures, amount: Decimal) -> str:
    return (
        f"The {budget.period} budget of {seen.limit:.4f} is used up "
        f"({seen.spent:.4f} spent, {seen.reserved:.4f} held by requests in flight; this request needs up to "
        f"{amount:.4f}); it resets at {budget.period_end.isoformat(timespec='seconds')}."
    )


def budget_status(budget: Budget | None) -> dict[str, object] | None:
    """What the router (and the self-tuner) may weigh: how much is left, and how far the period is.
    The router passes `budget_of(tenant)` (the copy that came with the key, seconds old at most)."""
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


# --- shadow evaluation's allowance ------------------------------------------------------------------
def evaluation_allowance(tenant_id: int) -> EvaluationAllowance:
    """The tenant's evaluation allowance for this calendar month: created with
    MODELGATE_EVALUATION_ALLOWANCE on first use, started afresh (spent 0) when a month ends."""
    now = timezone.now()
    start, end = period_bounds(Budget.Period.MONTHLY, None, now)
    allowance, _ = EvaluationAllowance.objects.get_or_create(
        tenant_id=tenant_id,
        defaults={"limit": settings.MODELGATE_EVALUATION_ALLOWANCE, "period_start": start, "period_end": end},
    )
    if allowance.period_end <= now:
        # Only one concurrent caller moves the period; in-flight holds stay and settle into the new one.
        EvaluationAllowance.objects.filter(pk=allowance.pk, period_end__lte=now).update(
            spent=Decimal("0"), period_start=start, period_end=end
        )
        allowance.refresh_from_db()
    return allowance


def reserve_evaluation(allowance: EvaluationAllowance, amount: Decimal) -> bool:
    """Hold `amount` on the allowance if it fits; never on the tenant's budget."""
    if amount <= 0:
        return True
    return bool(EvaluationAllowance.objects.filter(pk=allowance.pk, limit__gte=F("spent") + F("reserved") + amount)
                .update(reserved=F("reserved") + amount))


def settle_evaluation(allowance: EvaluationAllowance, held: Decimal, actual: Decimal) -> Decimal:
    """Replace the hold by the actual cost, never more than was held; returns what was charged."""
    charged = min(actual, held)
    if held > 0:
        EvaluationAllowance.objects.filter(pk=allowance.pk).update(
            reserved=Greatest(F("reserved") - held, Decimal("0")), spent=F("spent") + charged
        )
    return charged


def release_evaluation(allowance_or_tenant: EvaluationAllowance | int, held: Decimal) -> None:
    if held <= 0:
        return
    tenant = {"tenant_id": allowance_or_tenant} if isinstance(allowance_or_tenant, int) else {"pk": allowance_or_tenant.pk}
    EvaluationAllowance.objects.filter(**tenant).update(reserved=Greatest(F("reserved") - held, Decimal("0")))
