"""`manage.py modelserver` runs with its heap settings: a fixed mmap threshold, two malloc arenas and a
trim every 10 s unless configured otherwise, and an operator's glibc settings win over ours. `serve` and the test suite
start the model server through this command, so they get the same."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import Any

import pytest

from inference.client import ModelServerUnavailable, RemotePool
from tests.conftest import MODEL_SERVER_READY_SECONDS, ROOT

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")


def heap_of_a_model_server(tmp_path, **env: str) -> dict[str, Any]:
    """Start `manage.py modelserver` with `env` over ours (less any heap setting), return its ping's heap."""
    address = f"unix://{tmp_path / 'models.sock'}"
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("MALLOC_", "GLIBC_TUNABLES", "MODELGATE_MODEL_MALLOC_", "MODELGATE_MODEL_TRIM_"))}
    process = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "modelserver", "--address", address],
                               cwd=ROOT, env={**clean, "MODELGATE_LOG_LEVEL": "WARNING", **env})
    try:
        pool, deadline = RemotePool(address), time.monotonic() + MODEL_SERVER_READY_SECONDS
        while True:
            try:
                return pool.ping()["heap"]
            except ModelServerUnavailable:
                assert process.poll() is None, f"the model server exited ({process.returncode})"
                assert time.monotonic() < deadline, "the model server did not start"
                time.sleep(0.2)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_model_server_caps_its_arenas_and_trims_by_default(tmp_path):
    heap = heap_of_a_model_server(tmp_path)

    assert heap["mmap_threshold_kb"] == 1024
    assert heap["arena_max"] == 2
    assert heap["trim_seconds"] == 10.0


def test_an_operators_glibc_settings_win_and_trimming_can_be_turned_off(tmp_path):
    heap = heap_of_a_model_server(tmp_path, MALLOC_ARENA_MAX="3", MODELGATE_MODEL_MALLOC_ARENA_MAX="6",
                                  MALLOC_MMAP_THRESHOLD_="524288", MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB="64",
                                  MODELGATE_MODEL_TRIM_SECONDS="0")

    assert heap == {**heap, "arena_max": 3, "mmap_threshold_kb": 512, "trim_seconds": 0, "trims": 0}


def test_zero_leaves_glibc_its_own_threshold_and_arenas(tmp_path):
    heap = heap_of_a_model_server(tmp_path, MODELGATE_MODEL_MALLOC_ARENA_MAX="0", MODELGATE_MODEL_MALLOC_MMAP_THRESHOLD_KB="0")

    assert heap["arena_max"] is None
    assert heap["mmap_threshold_kb"] is None
