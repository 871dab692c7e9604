"""The strict environment readers, and a process that refuses to start on a bad value."""
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_decimal, env_float, env_int, env_list, env_path, env_str

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False), ("off", False), ("", False)])
def test_env_bool_reads_the_usual_spellings(raw, expected):
    assert env_bool("FLAG", not expected, environ={"FLAG": raw}) is expected


def test_env_bool_uses_the_default_when_unset():
    assert env_bool("FLAG", True, environ={}) is True


def test_env_bool_rejects_anything_else_naming_the_variable():
    with pytest.raises(ImproperlyConfigured, match="FLAG must be a boolean.*'maybe'"):
        env_bool("FLAG", False, environ={"FLAG": "maybe"})


def test_env_int_parses_and_checks_bounds():
    assert env_int("N", 3, environ={"N": " 42 "}) == 42
    assert env_int("N", 3, environ={}) == 3
    with pytest.raises(ImproperlyConfigured, match="N must be an integer; got 'four'"):
        env_int("N", 3, environ={"N": "four"})
    with pytest.raises(ImproperlyConfigured, match="N must be at least 1; got 0"):
        env_int("N", 3, min_value=1, environ={"N": "0"})
    with pytest.raises(ImproperlyConfigured, match="N must be at most 10; got 11"):
        env_int("N", 3, max_value=10, environ={"N": "11"})


def test_env_float_and_env_decimal_parse_and_check_bounds():
    assert env_float("F", 1.5, environ={"F": "0.25"}) == 0.25
    assert env_decimal("D", "0.00002", environ={}) == Decimal("0.00002")
    with pytest.raises(ImproperlyConfigured, match="F must be a number; got 'fast'"):
        env_float("F", 1.0, environ={"F": "fast"})
    with pytest.raises(ImproperlyConfigured, match="F must be a finite number"):
        env_float("F", 1.0, environ={"F": "nan"})
    with pytest.raises(ImproperlyConfigured, match="F must be at most 60"):
        env_float("F", 1.0, max_value=60, environ={"F": "61"})
    with pytest.raises(ImproperlyConfigured, match="D must be a decimal number; got 'cheap'"):
        env_decimal("D", "0", environ={"D": "cheap"})
    with pytest.raises(ImproperlyConfigured, match="D must be at least 0"):
        env_decimal("D", "0", min_value="0", environ={"D": "-1"})


def test_env_str_checks_choices():
    assert env_str("LEVEL", "INFO", choices=("INFO", "DEBUG"), environ={}) == "INFO"
    assert env_str("LEVEL", None, environ={"LEVEL": ""}) is None
    with pytest.raises(ImproperlyConfigured, match="LEVEL must be one of INFO, DEBUG; got 'LOUD'"):
        env_str("LEVEL", "INFO", choices=("INFO", "DEBUG"), environ={"LEVEL": "LOUD"})


def test_env_list_splits_on_commas_and_refuses_empty_items():
    assert env_list("HOSTS", ["x"], environ={"HOSTS": "a.example, b.example"}) == ["a.example", "b.example"]
    assert env_list("HOSTS", ["x"], environ={}) == ["x"]
    with pytest.raises(ImproperlyConfigured, match="HOSTS must be a comma-separated list"):
        env_list("HOSTS", [], environ={"HOSTS": "a,,b"})


def test_env_path_refuses_a_file(tmp_path):
    file = tmp_path / "f"
    file.write_text("x")
    assert env_path("DIR", tmp_path, environ={}) == tmp_path
    assert env_path("DIR", Path("/nope"), environ={"DIR": str(tmp_path)}) == tmp_path.resolve()
    with pytest.raises(ImproperlyConfigured, match="DIR must name a directory"):
        env_path("DIR", tmp_path, environ={"DIR": str(file)})


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("DEBUG", "maybe", "DEBUG must be a boolean"),
        ("MODELGATE_LOG_LEVEL", "LOUD", "MODELGATE_LOG_LEVEL must be one of"),
        ("MODELGATE_MAX_REQUEST_BYTES", "lots", "MODELGATE_MAX_REQUEST_BYTES must be an integer"),
        ("DATABASE_URL", "sqlite:///db.sqlite3", "DATABASE_URL must point at PostgreSQL"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must start with redis://"),
        ("SECRET_KEY", "short", "SECRET_KEY must be at least 32 characters"),
        ("MODELGATE_BIND", "8000", "MODELGATE_BIND must be host:port"),
        ("MODELGATE_WEBHOOK_RETRY_SECONDS", "soon", "MODELGATE_WEBHOOK_RETRY_SECONDS must be a number"),
        ("MODELGATE_LOCAL_COMPUTE_PRICE", "free", "MODELGATE_LOCAL_COMPUTE_PRICE must be a decimal number"),
        ("EMAIL_URL", "carrier-pigeon://coop", "EMAIL_URL is not a valid email URL"),
    ],
)
def test_a_bad_setting_stops_the_process_with_a_clear_message(variable, value, message):
    env = {**os.environ, variable: value}
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr
