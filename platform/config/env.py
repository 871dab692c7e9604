"""Strict readers for environment variables: a bad value stops the process with a clear message."""
from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

N = TypeVar("N", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return None if value is None else value.strip()


def env_str(
    name: str,
    default: str | None = None,
    *,
    choices: tuple[str, ...] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    value = _raw(name, environ)
    if value is None or value == "":
        value = default
    if value is not None and choices is not None and value not in choices:
        raise ImproperlyConfigured(
            f"{name} must be one of {', '.join(choices)}; got {value!r}."
        )
    return value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (1/0, true/false, yes/no, on/off); got {value!r}."
    )


def env_int(
    name: str,
    default: int,
    *,
    min_value: int | None = None,
    max_value: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    return _number(name, default, int, "an integer", min_value, max_value, environ)


def env_float(
    name: str,
    default: float,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    return _number(name, default, float, "a number", min_value, max_value, environ)


def _number(name: str, default: N, kind: type[N], described: str, min_value: N | None, max_value: N | None,
            environ: Mapping[str, str] | None) -> N:
    value = _raw(name, environ)
    if value is None or value == "":
        number = default
    else:
        try:
            number = kind(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be {described}; got {value!r}.") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ImproperlyConfigured(f"{name} must be a finite number; got {value!r}.")
    if min_value is not None and number < min_value:
        raise ImproperlyConfigured(f"{name} must be at least {min_value}; got {number}.")
    if max_value is not None and number > max_value:
        raise ImproperlyConfigured(f"{name} must be at most {max_value}; got {number}.")
    return number


def env_decimal(
    name: str, default: str, *, min_value: str | None = None, environ: Mapping[str, str] | None = None
) -> Decimal:
    value = _raw(name, environ) or default
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number; got {value!r}.") from None
    if not number.is_finite():
        raise ImproperlyConfigured(f"{name} must be a finite number; got {value!r}.")
    if min_value is not None and number < Decimal(min_value):
        raise ImproperlyConfigured(f"{name} must be at least {min_value}; got {number}.")
    return number


def env_list(
    name: str, default: list[str], *, environ: Mapping[str, str] | None = None
) -> list[str]:
    value = _raw(name, environ)
    if value is None or value == "":
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(
            f"{name} must be a comma-separated list without empty items; got {value!r}."
        )
    return items


def env_path(name: str, default: Path, *, environ: Mapping[str, str] | None = None) -> Path:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ImproperlyConfigured(f"{name} must name a directory; {value!r} is a file.")
    return path.resolve()
