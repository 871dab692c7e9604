"""The starter pack: packaged models registered once, each answering a real health check."""
from __future__ import annotations

import pytest

from registry import services
from registry.models import ModelSpec

EXPECTED = {
    "minilm-l6": "embeddings", "lid-176": "language_id", "whisper-tiny-en": "speech", "whisper-base": "speech",
    "smollm2-135m-instruct": "generation", "zero-shot-minilm": "classification", "intent-tiny-en": "intent",
}


@pytest.mark.django_db
def test_registration_is_complete_and_idempotent():
    first = dict(services.register_starter_pack())
    assert set(first) == set(EXPECTED) and set(first.values()) == {"registered"}
    second = dict(services.register_starter_pack())
    assert set(second.values()) == {"already registered"}
    assert {s.slug: s.task for s in ModelSpec.objects.all()} == EXPECTED
    assert all(s.tier == "local" and s.price_per_compute_second > 0 for s in ModelSpec.objects.all())


@pytest.mark.django_db
@pytest.mark.parametrize("slug", ["lid-176", "minilm-l6", "zero-shot-minilm", "whisper-tiny-en"])
def test_a_health_check_runs_a_real_inference_and_is_recorded(starter, slug):
    result = services.health_check(spec=starter[slug])
    assert result.ok, result.detail
    fresh = ModelSpec.objects.get(slug=slug)
    assert fresh.last_check_ok is True and fresh.last_check_latency_ms > 0 and fresh.last_check_at
    assert fresh.memory_mb > 0 and fresh.load_seconds is not None


@pytest.mark.django_db
def test_a_failed_load_is_recorded_with_its_error(starter, settings, tmp_path):
    settings.MODELGATE_MODEL_ROOTS = [str(tmp_path)]
    broken = ModelSpec.objects.create(
        slug="broken", display_name="broken", task="embeddings", backend="sentence-transformers",
        source_kind="path", source=str(tmp_path / "missing"),
    )
    result = services.health_check(spec=broken)
    assert not result.ok and "weights not found" in result.detail
    broken.refresh_from_db()
    assert broken.last_check_ok is False and "weights not found" in broken.last_error


@pytest.mark.django_db(transaction=True)
def test_models_marked_preload_load_in_the_background(isolated_pool):
    services.register_starter_pack()
    ModelSpec.objects.filter(slug="lid-176").update(preload=True)
    services.preload_models().join(timeout=120)
    assert isolated_pool.loaded() == ["lid-176"]
