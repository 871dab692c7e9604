"""`manage.py models …`: listing, health, load/unload and the starter pack from the command line."""
from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from registry.models import ModelSpec


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("models", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_register_starter_then_list_says_how_to_get_translation():
    assert "registered" in run("register-starter")
    listing = run("list")
    assert "lid-176" in listing and "health=unchecked" in listing
    assert "models pull facebook/nllb-200-distilled-600M --convert ct2" in listing


def test_health_prints_and_records_the_result(starter):
    output = run("health", "lid-176")
    assert "lid-176: answered in" in output
    assert "health=ok" in run("list", "--task", "language_id")


def test_load_and_unload(starter, isolated_pool):
    assert "loaded in" in run("load", "minilm-l6")
    assert isolated_pool.is_loaded("minilm-l6")
    assert "unloaded" in run("unload", "minilm-l6")


def test_bench_reports_latency_and_batched_throughput(starter):
    output = run("bench", "lid-176", "--requests", "8")
    assert "one at a time: p50" in output and "all at once (batched)" in output


@pytest.mark.django_db
def test_unknown_models_are_named():
    with pytest.raises(CommandError, match="Unknown models: nope"):
        run("health", "nope")


def test_a_failing_health_check_fails_the_command(starter, settings, tmp_path):
    settings.MODELGATE_MODEL_ROOTS = [str(tmp_path)]
    ModelSpec.objects.create(slug="broken", display_name="b", task="language_id", backend="fasttext",
                             source_kind="path", source=str(tmp_path / "none.ftz"))
    with pytest.raises(CommandError, match="Failed: broken"):
        run("health", "broken")
