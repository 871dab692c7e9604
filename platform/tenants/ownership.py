"""What belongs to a tenant, found from the models themselves rather than listed by hand.

A row belongs to a tenant when a chain of CASCADE foreign keys leads from it to the tenant: deleting
the tenant would delete it. That is exactly what a tenant's deletion must remove and its export must
contain, and it stays right as apps above this one add models, without this low layer importing them
(it reads Django's app registry).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from graphlib import CycleError, TopologicalSorter

from django.apps import apps
from django.db import models

from tenants.models import Tenant

# Never exported: hashes of key secrets, encrypted provider keys and webhook secrets, passwords.
SECRET_FIELD = re.compile(r"secret|password|encrypted")


@dataclass(frozen=True)
class Owned:
    """A model holding tenants' rows, and the lookup from it to the tenant's id."""

    model: type[models.Model]
    lookup: str  # e.g. "tenant_id", "record__tenant_id"
    depth: int  # foreign keys between it and the tenant

    @property
    def kind(self) -> str:
        return self.model._meta.label_lower

    def rows(self, tenant_id: int) -> models.QuerySet[models.Model]:
        return self.model._base_manager.filter(**{self.lookup: tenant_id}).order_by()


def _cascades_to(field: models.Field, model: type[models.Model]) -> bool:
    return (isinstance(field, models.ForeignKey) and field.remote_field.model is model
            and field.remote_field.on_delete is models.CASCADE)


def _indexed_fields(model: type[models.Model]) -> set[str]:
    """Fields that lead an index of the model (as declared), so that a lookup by them is no table scan."""
    meta = model._meta
    leading = {field.name for field in meta.concrete_fields if field.db_index or field.unique}
    for index in meta.indexes:
        if index.fields:
            leading.add(index.fields[0].lstrip("-"))
    for constraint in meta.constraints:
        if isinstance(constraint, models.UniqueConstraint) and constraint.fields:
            leading.add(constraint.fields[0])
    return leading


@cache
def owned_models() -> tuple[Owned, ...]:
    """Every model with tenants' rows, children before parents: deleting in this order never leaves a
    batch to cascade into a large table, and exporting in reverse gives parents before children."""
    found: dict[type[models.Model], Owned] = {}
    candidates = [m for m in apps.get_models() if m is not Tenant and not m._meta.proxy]
    changed = True
    while changed:  # walk the CASCADE chains outward from the tenant
        changed = False
        for model in candidates:
            best = found.get(model)
            for field in model._meta.concrete_fields:
                parent = field.remote_field.model if field.is_relation else None
                if parent is model or not isinstance(field, models.ForeignKey):
                    continue
                if _cascades_to(field, Tenant):
                    option = Owned(model, field.attname, 1)
                elif parent in found and _cascades_to(field, parent):
                    option = Owned(model, f"{field.name}__{found[parent].lookup}", found[parent].depth + 1)
                else:
                    continue
                if best is None or _better(option, best, model):
                    best = option
            if best is not None and found.get(model) != best:
                found[model] = best
                changed = True
    return tuple(_order(found))


def _better(option: Owned, current: Owned, model: type[models.Model]) -> bool:
    """Prefer a path whose first hop is indexed (a document by its collection, not by an unindexed
    tenant column), then the shorter one."""
    indexed = _indexed_fields(model)
    option_indexed = option.lookup.split("__")[0].removesuffix("_id") in indexed
    current_indexed = current.lookup.split("__")[0].removesuffix("_id") in indexed
    if option_indexed != current_indexed:
        return option_indexed
    return option.depth < current.depth


def _order(found: dict[type[models.Model], Owned]) -> list[Owned]:
    """Rows pointing at other owned rows go first (a record before its key, a document before its
    collection). A cycle (a policy's learned router points back at the policy) is broken at its
    SET_NULL link, which the delete then clears instead of cascading."""
    edges: dict[type[models.Model], set[tuple[type[models.Model], bool]]] = {model: set() for model in found}
    for model in found:
        for field in model._meta.concrete_fields:
            target = field.remote_field.model if field.is_relation else None
            if target in found and target is not model:
                edges[target].add((model, field.remote_field.on_delete is models.CASCADE))
    while True:
        sorter = TopologicalSorter({target: {m for m, _ in sources} for target, sources in edges.items()})
        try:
            # The sorter yields a model after everything pointing at it: children first.
            order = list(sorter.static_order())
        except CycleError as exc:
            cycle = exc.args[1]
            for target, source in zip(cycle[1:], cycle):
                weak = {(model, cascade) for model, cascade in edges[target] if model is source and not cascade}
                if weak:
                    edges[target] -= weak
                    break
            else:
                raise
            continue
        return [found[model] for model in order]


def is_secret(field: models.Field) -> bool:
    return bool(SECRET_FIELD.search(field.name))
