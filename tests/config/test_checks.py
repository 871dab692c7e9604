"""System checks: pgvector must be available in a recent enough version."""
import pytest
from django.core import checks

from config.checks import _version_tuple


@pytest.mark.django_db
def test_the_real_database_passes_the_pgvector_check():
    messages = checks.run_checks(databases=["default"], tags=[checks.Tags.database])
    assert [m for m in messages if m.id and m.id.startswith("modelgate.")] == []


def test_versions_compare_numerically():
    assert _version_tuple("0.8.2") >= (0, 8, 0)
    assert _version_tuple("0.10.0") > _version_tuple("0.8.2")
    assert _version_tuple("0.7.4") < (0, 8, 0)


def test_debug_on_is_flagged_in_deploy_checks(settings):
    settings.DEBUG = True
    messages = checks.run_checks(include_deployment_checks=True, tags=[checks.Tags.security])
    assert "modelgate.W001" in {m.id for m in messages}
