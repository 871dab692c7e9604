"""django-q2 schedules declared by the apps, created or updated after every migrate (idempotent)."""
from __future__ import annotations


def register_schedules(schedules: dict[str, tuple[str, str, int | None]]) -> None:
    """`schedules`: name → (dotted function, django-q2 schedule type, minutes between runs)."""
    from django_q.models import Schedule

    for name, (func, schedule_type, minutes) in schedules.items():
        Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": schedule_type, "minutes": minutes, "repeats": -1}
        )
