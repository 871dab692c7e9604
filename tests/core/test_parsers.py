"""core.parsers on its own: what it names, what it lets through, and its two depth rules agreeing."""
from __future__ import annotations

import io
import json

import pytest
from rest_framework.exceptions import ParseError

from core.parsers import InvalidText, JSONParser, escape_unsafe, text_problem, too_deep


def parse(body: str):
    return JSONParser().parse(io.BytesIO(body.encode()), "application/json", {})


@pytest.mark.parametrize("body, message", [
    ('{"messages": [{"role": "user", "content": "a\\u0000"}]}', "messages.0.content: Holds a NUL character (U+0000)"),
    ('{"input": ["ok", "\\ud800"]}', "input.1: Holds a lone surrogate (U+D800)"),
    ('{"input": "\\uDFFF"}', "input: Holds a lone surrogate (U+DFFF)"),
    ('{"metadata": {"a\\u0000": 1}}', "metadata: A key holds a NUL character"),
    ('{"\\ud800": 1}', "A key holds a lone surrogate"),
    ('["\\u0000"]', "0: Holds a NUL character"),
    ('"\\u0000"', "Holds a NUL character"),
])
def test_a_nul_or_a_lone_surrogate_is_refused_naming_where_it_is(body, message):
    with pytest.raises(InvalidText) as refused:
        parse(body)
    assert str(refused.value.detail).startswith(message)


@pytest.mark.parametrize("body", [
    '{"text": "\\ud83d\\ude00 an emoji as an escaped pair"}', '{"text": "\\u00e9t\\u00e9", "n": [1, 2.5, null, true]}',
    '{"text": "a backslash then u0000: \\\\u0000"}', '"\\ud7ff\\ue000"',
])
def test_text_that_can_be_stored_passes_unchanged(body):
    assert parse(body) == json.loads(body)


def test_depth_is_counted_in_containers_and_the_limit_is_inclusive(settings):
    limit = settings.MODELGATE_MAX_JSON_DEPTH
    assert parse("[" * limit + "]" * limit) is not None
    for body in ("[" * (limit + 1) + "]" * (limit + 1), "[" * 5000 + "]" * 5000, '{"a": ' * 5000 + "1" + "}" * 5000):
        with pytest.raises(ParseError, match=f"nested deeper than {limit} levels"):
            parse(body)
    # Deep and holding a NUL: the depth is what is reported, whichever rule found it.
    with pytest.raises(ParseError):
        parse("[" * (limit + 1) + '"\\u0000"' + "]" * (limit + 1))


@pytest.mark.parametrize("data", [
    [], {}, "s", [[[]]], {"a": [{"b": [1, {"c": []}]}]}, [[[[["x"]]]], {"a": {"b": {"c": {"d": {}}}}}], [1, [2, [3, [4, [5]]]]],
])
@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5])
def test_the_fast_depth_rule_agrees_with_the_full_walk(data, limit):
    problem = text_problem(data, max_depth=limit)
    assert too_deep(data, limit) == (problem is not None and problem.too_deep)


def test_escaping_makes_unsafe_text_storable_and_leaves_other_text_alone():
    assert escape_unsafe("j\x00k\ud800") == "j\\u0000k\\ud800"
    assert escape_unsafe("été 😀") == "été 😀"


def test_a_long_key_is_cut_in_the_path_named():
    problem = text_problem({"k" * 10_000: "\x00"})
    assert str(problem) == "k" * 64 + ": Holds a NUL character (U+0000), which cannot be stored."


@pytest.mark.parametrize("charset", ["unicode_escape", "raw_unicode_escape"])
def test_a_charset_that_decodes_to_a_lone_surrogate_meets_the_same_rule(charset):
    body = b'{"input": "a\\ud800"}'  # the codec, not JSON, turns the escape into the character
    with pytest.raises(InvalidText, match="input: Holds a lone surrogate"):
        JSONParser().parse(io.BytesIO(body), "application/json", {"encoding": charset})


def test_invalid_utf8_and_nan_are_invalid_json():
    for body in (b'{"a": "\xed\xa0\x80"}', b'{"a": NaN}', b'{"a": 1e999999999999}x'):
        with pytest.raises(ParseError):
            JSONParser().parse(io.BytesIO(body), "application/json", {})


def test_an_integer_a_double_cannot_hold_is_invalid_json():
    assert parse('{"n": %s}' % ("9" * 308)) == {"n": int("9" * 308)}
    assert parse('{"n": -%s}' % ("9" * 308)) == {"n": -int("9" * 308)}
    for literal in ("9" * 309, "-" + "9" * 309, "1" + "0" * 5000):
        with pytest.raises(ParseError, match="digits; numbers have at most 308"):
            parse('{"n": [%s]}' % literal)
