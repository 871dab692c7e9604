"""Background work for the registry (django-q2): daily hub update checks, one-time weight preparation."""
from __future__ import annotations

import logging

from core.schedules import register_schedules
from registry import services
from registry.models import ModelSpec

logger = logging.getLogger("modelgate.registry")

SCHEDULES = {
    # name: (function, schedule type, minutes between runs)
    "registry: check hub updates": ("registry.tasks.check_hub_updates", "D", None),
    "registry: close stalled model operations": ("registry.tasks.close_stalled_operations", "I", 5),
}


def check_hub_updates() -> dict[str, str]:
    """Flag newer hub revisions in the admin; never upgrade a model silently."""
    specs = ModelSpec.objects.filter(source_kind=ModelSpec.SourceKind.HUB, enabled=True)
    return {spec.slug: status for spec, status in services.check_for_updates(specs)}


def prepare_model(spec_id: int) -> str:
    """Assemble or convert a model's weights ahead of its first request."""
    spec = ModelSpec.objects.filter(pk=spec_id).first()
    if spec is None:
        return "gone"
    services.ensure_prepared(spec)
    return "prepared"


def ensure_schedules(**kwargs: object) -> None:
    register_schedules(SCHEDULES)


def run_model_operation(operation_id: int) -> str:
    """An operation started from the admin (pull, update check, load, unload, health check, benchmark)."""
    return services.run_operation(operation_id)


def close_stalled_operations() -> int:
    """Operations whose worker died or was timed out by the cluster never report again: after the task
    timeout (plus a minute) they are closed as failed, so their page stops waiting."""
    return services.close_stalled_operations()
