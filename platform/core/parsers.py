"""Request body parsers (REST_FRAMEWORK DEFAULT_PARSER_CLASSES): what they hand a view is text every layer
below can hold. A body nested past MODELGATE_MAX_JSON_DEPTH is a 400 (Python's own recursion limit would
otherwise end the request in a RecursionError), and a NUL character (which PostgreSQL's text and jsonb
cannot store) or a lone UTF-16 surrogate (which is not text: it cannot be encoded, stored or echoed back)
anywhere in a key or a value is a 400 naming where it is, before any view or serializer sees the data.
"""
from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils import json

from core.errors import ApiError

# U+0000 and the surrogate code points U+D800–U+DFFF, which a JSON \u escape can name but UTF-8 cannot carry.
_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_SHOWN_KEY_CHARACTERS = 64  # a path in a message names keys; a megabyte-long key is cut


# A double holds every integer of up to 308 digits; a longer one fits no field (numbers become floats or
# 64-bit integers), and converting it raises OverflowError wherever a float is made of it.
MAX_INTEGER_DIGITS = 308


def bounded_int(literal: str) -> int:
    """json.loads's parse_int: an integer literal, refused (ValueError, so invalid JSON) past MAX_INTEGER_DIGITS."""
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_INTEGER_DIGITS:
        raise ValueError(f"an integer of {digits} digits; numbers have at most {MAX_INTEGER_DIGITS}")
    return int(literal)


class InvalidText(ApiError):
    default_code = "invalid_request"


def describe(character: str) -> str:
    if character == "\x00":
        return "a NUL character (U+0000), which cannot be stored"
    return f"a lone surrogate (U+{ord(character):04X}), which is not valid Unicode text"


def escape_unsafe(text: str) -> str:
    """`text` with NUL and lone surrogates written as \\u escapes: safe to store, log and echo."""
    return _UNSAFE.sub(lambda match: f"\\u{ord(match[0]):04x}", text)


@dataclass(frozen=True)
class Problem:
    path: tuple[str, ...]
    what: str
    too_deep: bool = False

    def __str__(self) -> str:
        """`messages.0.content: Holds a NUL character …`: the field named as validation errors name it."""
        return f"{'.'.join(self.path)}: {self.what}" if self.path else self.what


def text_problem(data: Any, *, max_depth: int | None = None) -> Problem | None:
    """The first key or string in `data` that cannot be stored, or the first container nested deeper
    than `max_depth`; None when all is well.

    Iterative, not recursive: it must not itself hit the recursion limit it guards against."""
    stack: list[tuple[Any, tuple[str, ...], int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if match := _UNSAFE.search(value):
                return Problem(path, f"Holds {describe(match[0])}.")
            continue
        if isinstance(value, dict):
            children: Iterable[tuple[str, Any]] = value.items()
        elif isinstance(value, (list, tuple)):
            children = ((str(index), item) for index, item in enumerate(value))
        else:
            continue
        if max_depth is not None and depth > max_depth:
            return Problem(path, f"Nested deeper than {max_depth} levels.", too_deep=True)
        pushed: list[tuple[Any, tuple[str, ...], int]] = []
        for key, item in children:
            if isinstance(key, str) and (match := _UNSAFE.search(key)):
                return Problem(path, f"A key holds {describe(match[0])}.")
            pushed.append((item, (*path, str(key)[:_SHOWN_KEY_CHARACTERS]), depth + 1))
        stack.extend(reversed(pushed))  # the first problem in document order is the one named
    return None


def check_text(data: Any) -> Any:
    problem = text_problem(data)
    if problem is not None:
        raise InvalidText(str(problem))
    return data


def too_deep(data: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than `max_depth`: text_problem's depth rule alone, looking at
    containers only (a third of its time on a large body)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            return True
        stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value)
                     if isinstance(item, (dict, list)))
    return False


# A NUL or a lone surrogate reaches a parsed string as a \u escape of the JSON text, or as itself when the
# declared charset decodes to one (unicode_escape does). Without either in the text, no string of the body
# needs looking at.
_MAY_BE_UNSAFE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})|[\x00\ud800-\udfff]")


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        limit = settings.MODELGATE_MAX_JSON_DEPTH
        encoding = parsers.get_encoding(parser_context or {})
        try:
            text = codecs.getreader(encoding)(stream).read()
            data = json.loads(text, parse_constant=json.strict_constant if self.strict else None, parse_int=bounded_int)
        except ValueError as exc:  # invalid JSON, or text that is not in the declared encoding
            raise ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {limit} levels.") from None
        problem = text_problem(data, max_depth=limit) if _MAY_BE_UNSAFE.search(text) else None
        if (problem is not None and problem.too_deep) or (problem is None and too_deep(data, limit)):
            raise ParseError(f"JSON parse error - nested deeper than {limit} levels.")
        if problem is not None:
            raise InvalidText(str(problem))
        return data


class FormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        return check_text_of_form(super().parse(stream, media_type, parser_context))


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        check_text_of_form(parsed.data)  # file names need no check: Django keeps only their printable characters
        return parsed


def check_text_of_form(data: Any) -> Any:
    """Form fields meet the JSON body's text rule (a form has no nesting to limit)."""
    check_text({key: values[0] if len(values) == 1 else values for key, values in data.lists()})
    return data
