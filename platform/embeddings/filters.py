"""Metadata filters, compiled to SQL over the `metadata` JSONB column with every value a parameter.

`{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}, "published": {"$lt": "2024-06-01"}}`:
fields are ANDed; equality and `$in` use containment (`@>`, served by the GIN index); ranges compare
numbers, or dates given as ISO 8601 strings, through jsonpath, where a value of another type simply
does not match.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from core.errors import ApiError

RANGE_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
SET_OPERATORS = ("$in", "$nin")
OPERATORS = ("$eq", "$ne", *SET_OPERATORS, *RANGE_OPERATORS)
MAX_CONDITIONS = 32
MAX_SET_VALUES = 1000
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$")


class InvalidFilter(ApiError):
    default_code = "invalid_request"


@dataclass(frozen=True)
class CompiledFilter:
    sql: str  # "" when the filter is empty; otherwise starts with " AND "
    params: list[Any]

    def __bool__(self) -> bool:
        return bool(self.sql)


NO_FILTER = CompiledFilter("", [])


def compile_filter(spec: Any, *, schema: dict[str, str] | None = None) -> CompiledFilter:
    """Validate a filter and turn it into a SQL condition; bad filters raise InvalidFilter naming the field."""
    if spec is None or spec == {}:
        return NO_FILTER
    if not isinstance(spec, dict):
        raise InvalidFilter("filter: An object of metadata field to value or to {operator: value}.")
    if len(spec) > MAX_CONDITIONS:
        raise InvalidFilter(f"filter: At most {MAX_CONDITIONS} fields.")
    clauses: list[str] = []
    params: list[Any] = []
    for field, condition in spec.items():
        where = f"filter.{field}"
        if not field or field.startswith("$"):
            raise InvalidFilter(f"{where}: Field names are metadata keys; operators go inside a field.")
        if not isinstance(condition, dict):
            condition = {"$eq": condition}
        if not condition:
            raise InvalidFilter(f"{where}: Give a value or at least one operator.")
        unknown = [name for name in condition if name not in OPERATORS]
        if unknown:
            raise InvalidFilter(f"{where}: Unknown operator {unknown[0]!r}; use {', '.join(OPERATORS)}.")
        kind = (schema or {}).get(field)
        for name, value in condition.items():
            if name in ("$eq", "$ne"):
                _scalar(value, f"{where}.{name}")
                clauses.append(("NOT " if name == "$ne" else "") + "(metadata @> %s::jsonb)")
                params.append(_dumps({field: value}))
            elif name in SET_OPERATORS:
                if not isinstance(value, list) or not value or len(value) > MAX_SET_VALUES:
                    raise InvalidFilter(f"{where}.{name}: A list of 1 to {MAX_SET_VALUES} values.")
                for index, item in enumerate(value):
                    _scalar(item, f"{where}.{name}.{index}")
                clauses.append(("NOT " if name == "$nin" else "") + "(metadata @> ANY(%s::jsonb[]))")
                params.append([_dumps({field: item}) for item in value])
        ranges = {name: value for name, value in condition.items() if name in RANGE_OPERATORS}
        if ranges:
            sql, range_params = _range(field, ranges, kind, where)
            clauses.append(sql)
            params.extend(range_params)
    return CompiledFilter(" AND " + " AND ".join(clauses), params)


def _range(field: str, bounds: dict[str, Any], kind: str | None, where: str) -> tuple[str, list[Any]]:
    dates = {name: _date_bound(value, f"{where}.{name}") for name, value in bounds.items() if isinstance(value, str)}
    numbers = {name: value for name, value in bounds.items() if _is_number(value)}
    for name, value in bounds.items():
        if name not in dates and name not in numbers:
            raise InvalidFilter(f"{where}.{name}: A number, or a date as an ISO 8601 string.")
    if dates and numbers:
        raise InvalidFilter(f"{where}: Compare with numbers or with dates, not both.")
    if dates and kind not in (None, "date"):
        raise InvalidFilter(f"{where}: The schema says this field is {kind}, not a date.")
    if numbers and kind not in (None, "number", "integer"):
        raise InvalidFilter(f"{where}: The schema says this field is {kind}, not a number.")
    variables = {name.removeprefix("$"): value for name, value in {**dates, **numbers}.items()}
    if dates:
        tests = [f"@.datetime() {RANGE_OPERATORS[name]} ${name[1:]}.datetime()" for name in dates]
        # _tz: dates with and without a time zone compare (in UTC, the session's zone).
        function = "jsonb_path_exists_tz"
    else:
        tests = [f"@ {RANGE_OPERATORS[name]} ${name[1:]}" for name in numbers]
        function = "jsonb_path_exists"
    path = "$ ? (" + " && ".join(tests) + ")"
    # silent: values of another type (or strings that are not dates) do not match rather than fail.
    return f"{function}(metadata -> %s, %s::jsonpath, %s::jsonb, true)", [field, path, _dumps(variables)]


def _scalar(value: Any, where: str) -> None:
    if isinstance(value, (dict, list)):
        raise InvalidFilter(f"{where}: Compare with a string, number, boolean or null.")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilter(f"{where}: Numbers must be finite.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _date_bound(value: str, where: str) -> str:
    """ISO 8601 dates and date-times, checked here so that a typo is a 400, not an empty result."""
    if not _ISO_DATE.match(value):
        raise InvalidFilter(f"{where}: {value!r} is not an ISO 8601 date (2024-05-01 or 2024-05-01T12:00:00Z).")
    try:
        (date.fromisoformat if len(value) == 10 else datetime.fromisoformat)(value)
    except ValueError:
        raise InvalidFilter(f"{where}: {value!r} is not a valid date.") from None
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def is_iso_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _date_bound(value, "")
    except InvalidFilter:
        return False
    return True
