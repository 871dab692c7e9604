"""Numbers for people on the operator console: milliseconds, money, shares."""
from __future__ import annotations

from typing import Any

from django import template

from routing import dashboard

register = template.Library()


@register.filter
def ms(value: float | None) -> str:
    return dashboard.format_ms(value)


@register.filter
def money(value: Any) -> str:
    return dashboard.format_money(value)


@register.filter
def share(value: float | None) -> str:
    return dashboard.format_share(value)
