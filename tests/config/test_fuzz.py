"""The API is held to its own OpenAPI schema by schemathesis: every /v1 operation, driven over HTTP on
127.0.0.1 with generated requests, valid and invalid, with a key that has every scope and a budget.
Checks: no 5xx, every status documented, every body as documented, and every request the schema calls
valid accepted. Local models are the session's model server; premium ones a loopback fake provider.

`make test` runs a bounded number of examples per operation with a fixed seed (MODELGATE_FUZZ_EXAMPLES,
default 8); `make fuzz` runs many more with a fresh seed. The hooks that put the test's own objects into
generated requests are in tests/config/fuzz_hooks.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from billing.models import Budget
from billing.usage import MAX_RANGE_DAYS
from embeddings import ingestion
from embeddings.models import IngestionJob
from tests.conftest import Caller
from tests.embeddings.conftest import collection, cross_encoder_dir, minilm, post, reranker, topic_documents  # noqa: F401
from tests.routing.conftest import FIXTURES, chat_dir, chat_model, nllb_dir, translator  # noqa: F401  (fixtures)
from tests.inference.tiny_translation import NLLB_LANGUAGES
from tests.routing.fake_providers import fake_providers  # noqa: F401  (a fixture)
from tests.routing.test_premium_routing import premium

ROOT = Path(__file__).resolve().parents[2]
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,positive_data_acceptance"
OPERATIONS = 32  # every /v1 operation: tests/routing/test_permissions.py's MATRIX has one row each


def examples() -> int:
    return int(os.environ.get("MODELGATE_FUZZ_EXAMPLES", "8"))


def phases() -> str:
    """`make test` generates and follows links; `make fuzz` adds the boundary values of every field (coverage)."""
    return os.environ.get("MODELGATE_FUZZ_PHASES", "examples,fuzzing,stateful")


def seed() -> int:
    """Fixed for `make test`, so that a run is reproducible; `make fuzz` sets a fresh one (and prints it)."""
    return int(os.environ.get("MODELGATE_FUZZ_SEED", "20261204"))


@pytest.fixture
def server_state(api, alice: Caller, collection, translator, chat_model, reranker, fake_providers, settings,  # noqa: F811
                 nllb_dir, chat_dir, cross_encoder_dir) -> dict:  # noqa: F811
    """What the hooks put into generated requests: Alice's objects, a budget, every kind of model."""
    # Each model fixture names its own directory; all of them are in use at once here.
    settings.MODELGATE_MODEL_ROOTS = [str(nllb_dir.parent), str(chat_dir.parent), str(cross_encoder_dir.parent)]
    Budget.objects.create(tenant=alice.tenant, limit=Decimal("1000"))
    premium("gpt-fake", "generation", fake_providers)
    answered = post(api, "/v1/detect-language", {"text": "The cat sleeps on a warm chair."}, alice)
    assert answered.status_code == 200, answered.content
    job = post(api, f"/v1/collections/{collection['id']}/jobs", {"documents": topic_documents()[:2]}, alice)
    assert job.status_code == 202, job.content
    ingestion.cancel_job(job=IngestionJob.objects.get(pk=job.json()["id"]))
    return {
        "key": alice.secret, "prefix": alice.key.prefix, "collection": collection["id"], "dimension": 384,
        "inference": answered.json()["inference_id"], "request_id": answered.json()["request_id"],
        "job": job.json()["id"], "audio": str(FIXTURES / "search_en.flac"), "max_range_days": MAX_RANGE_DAYS,
        "languages": list(NLLB_LANGUAGES),
    }


# Speech operations run Whisper, whose encoder reads 30 s of audio whatever the clip: a second or more per
# request on this machine. They get few examples and no boundary-value (coverage) phase, whose valid
# cases would each pay for a transcription; their invalid inputs are refused before any model runs.
CONFIG = """
[[operations]]
include-path-regex = "^/v1/(audio/transcriptions|intent)$"
generation.max-examples = 2
phases.coverage.enabled = false
"""


def run_schemathesis(base_url: str, state: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    report = tmp_path / "report.json"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run", f"{base_url}/api/schema/",
        "--checks", CHECKS, "--max-examples", str(examples()), "--seed", str(seed()),
        "--phases", phases(), "--workers", "2", "--mode", "all",
        "--header", f"Authorization: Bearer {state['key']}", "--request-timeout", "60",
        # Strings are UTF-8 text without NUL (PostgreSQL stores no U+0000; a lone surrogate is not text):
        # the API refuses both with a 400 naming the field (tests/config/test_hostile_inputs.py).
        "--generation-allow-x00", "false", "--generation-codec", "utf-8",
        "--generation-database", "none", "--no-color", "--suppress-health-check", "too_slow,filter_too_much",
        "--report", "json", "--report-json-path", str(report), "--output-truncate", "true",
    ]
    if os.environ.get("MODELGATE_FUZZ_SHRINK") != "1":
        command.append("--no-shrink")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.config.fuzz_hooks", "PYTHONPATH": str(ROOT),
           "MODELGATE_FUZZ_CONTEXT": json.dumps({**state, "base_url": base_url})}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.timeout(600 if examples() <= 8 else 7200)  # `make test`'s budget; `make fuzz` takes its time
def test_the_api_keeps_every_promise_of_its_schema(live_server, server_state, tmp_path):
    result = run_schemathesis(live_server.url, server_state, tmp_path)
    output = result.stdout + result.stderr
    print(output[-6000:])  # the summary, shown with -s
    assert result.returncode == 0, output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["operations"]["selected"] == OPERATIONS, report["operations"]
    assert report["operations"]["errored"] == 0 and report["complete"], report["operations"]


def test_a_vector_too_large_for_32_bit_distances_is_refused_not_stored(api, alice, collection):  # noqa: F811
    """Found by the fuzz test: a document of numbers near float32's limit was stored, and every cosine search
    then met a NaN distance, which no JSON answer can carry (a 500)."""
    huge = [3e30] + [0.0] * 383
    stored = post(api, f"/v1/collections/{collection['id']}/documents", {"documents": [{"id": "huge", "vector": huge}]}, alice)
    assert stored.status_code == 400 and stored.json()["error"]["message"].startswith("documents.0.vector:")
    searched = post(api, f"/v1/collections/{collection['id']}/search", {"vector": huge}, alice)
    assert searched.status_code == 400 and searched.json()["error"]["message"].startswith("vector:")
    near = post(api, f"/v1/collections/{collection['id']}/search", {"vector": [1e17] * 384}, alice)
    assert near.status_code == 200, near.content  # the schema's bound on each number is always accepted
