"""Hub access through the real huggingface_hub client and a fake hub on 127.0.0.1: pulls, updates, search, offline."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from safetensors.numpy import load_file, save

from registry import hub
from registry.hub import (
    HubUnavailable,
    NoSafeWeights,
    RepoNotFound,
    RevisionNotFound,
    check_update,
    discover,
    latest_revision,
    pull,
    select_files,
    weight_files,
)
from tests.registry.fake_hub import FakeHub, FakeRepo, silent_endpoint

TOKEN = "hf_fake_token_for_tests"
SENTIMENT = "acme/tiny-sentiment"
SAFE_FILES = ("README.md", "config.json", "model.safetensors", "tokenizer.json")


def sentiment_files(labels: tuple[str, str]) -> dict[str, bytes]:
    """A small classifier repo: safe files, plus pickled and duplicate weights that must never be downloaded."""
    config = {
        "architectures": ["BertForSequenceClassification"],
        "id2label": {str(index): label for index, label in enumerate(labels)},
    }
    weights = {"classifier.weight": np.arange(8, dtype=np.float32).reshape(2, 4)}
    return {
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}).encode(),
        "model.safetensors": save(weights),
        "pytorch_model.bin": b"\x80\x04\x95pickled torch weights",
        "onnx/model.onnx": b"duplicate weights in another format",
        "README.md": b"# tiny sentiment\n",
        ".gitattributes": b"*.bin filter=lfs\n",
    }


@pytest.fixture(autouse=True)
def isolated_hub_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No offline flag, token, endpoint or saved login from the machine leaks into a test."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    server = FakeHub(token=TOKEN)
    sentiment = server.add(
        FakeRepo(SENTIMENT, pipeline_tag="text-classification", library_name="transformers", downloads=500)
    )
    sentiment.commit(sentiment_files(("neg", "pos")), tag="v1")
    sentiment.commit(sentiment_files(("negative", "positive")))
    for repo_id, tag, downloads in [
        ("acme/tiny-embeddings", "sentence-similarity", 900),
        ("acme/tiny-features", "feature-extraction", 50),
        ("acme/tiny-whisper", "automatic-speech-recognition", 300),
        ("other/large-embeddings", "sentence-similarity", 10_000),
    ]:
        server.add(FakeRepo(repo_id, pipeline_tag=tag, downloads=downloads)).commit(sentiment_files(("a", "b")))
    server.add(FakeRepo("acme/tiny-private", private=True, downloads=5_000)).commit(sentiment_files(("a", "b")))
    server.add(FakeRepo("acme/tiny-pickled")).commit(
        {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04pickle", "training_args.bin": b"\x80\x04"}
    )
    with server:
        yield server


def shas(server: FakeHub, repo_id: str = SENTIMENT) -> list[str]:
    return [commit.sha for commit in server.repos[repo_id].commits]


def pull_from(server: FakeHub, cache: Path, repo_id: str = SENTIMENT, **kwargs) -> hub.PulledSnapshot:
    kwargs.setdefault("revision", "main")
    return pull(repo_id, cache_dir=cache, endpoint=server.endpoint, progress=False, **kwargs)


# -- pull ----------------------------------------------------------------------------------------


def test_pull_downloads_exactly_the_safe_files_at_the_commit_main_points_to(fake_hub: FakeHub, tmp_path: Path) -> None:
    snapshot = pull_from(fake_hub, tmp_path)

    newest = shas(fake_hub)[-1]
    assert (snapshot.repo_id, snapshot.revision, snapshot.commit_sha) == (SENTIMENT, "main", newest)
    assert snapshot.path == tmp_path / "models--acme--tiny-sentiment" / "snapshots" / newest
    assert snapshot.files == SAFE_FILES
    assert snapshot.size_bytes == sum((snapshot.path / name).stat().st_size for name in SAFE_FILES)
    assert snapshot.from_cache is False
    assert json.loads((snapshot.path / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    assert load_file(snapshot.path / "model.safetensors")["classifier.weight"].shape == (2, 4)
    # The pickle and the duplicate ONNX weights were never even asked for.
    assert fake_hub.requested("pytorch_model.bin") == []
    assert fake_hub.requested("onnx/") == []
    assert fake_hub.requested(".gitattributes") == []


def test_pull_of_a_tag_downloads_the_commit_the_tag_points_to(fake_hub: FakeHub, tmp_path: Path) -> None:
    snapshot = pull_from(fake_hub, tmp_path, revision="v1")

    assert snapshot.commit_sha == shas(fake_hub)[0]
    assert json.loads((snapshot.path / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    # Downloads go to the resolved sha, never to the moving name.
    assert fake_hub.requested("/resolve/v1/") == []


def test_a_commit_complete_in_the_cache_is_not_asked_for_again(fake_hub: FakeHub, tmp_path: Path) -> None:
    first = pull_from(fake_hub, tmp_path, revision=shas(fake_hub)[-1])
    asked = len(fake_hub.requests)

    again = pull_from(fake_hub, tmp_path, revision=shas(fake_hub)[-1])

    assert first.from_cache is False and again.from_cache is True
    assert again.files == first.files and again.path == first.path
    assert len(fake_hub.requests) == asked


def test_a_pulled_revision_is_served_from_the_cache_when_the_hub_is_down(fake_hub: FakeHub, tmp_path: Path) -> None:
    pulled = pull_from(fake_hub, tmp_path)
    fake_hub.stop()

    started = time.monotonic()
    by_sha = pull_from(fake_hub, tmp_path, revision=pulled.commit_sha)
    by_branch = pull_from(fake_hub, tmp_path, revision="main")

    assert time.monotonic() - started < 2
    for snapshot in (by_sha, by_branch):
        assert snapshot.from_cache is True
        assert (snapshot.commit_sha, snapshot.path, snapshot.files) == (pulled.commit_sha, pulled.path, SAFE_FILES)


def test_a_transfer_cut_part_way_resumes_where_it_stopped(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client counts what it received per chunk (10 MB by default); tiny chunks let a tiny file resume.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16)
    commit = fake_hub.repos[SENTIMENT].commits[-1]
    weights_path = f"/{SENTIMENT}/resolve/{commit.sha}/model.safetensors"
    fake_hub.cut_once[weights_path] = 48

    snapshot = pull_from(fake_hub, tmp_path)

    assert (snapshot.path / "model.safetensors").read_bytes() == commit.files["model.safetensors"]
    assert fake_hub.ranges == [(weights_path, "bytes=48-")]


def test_a_pull_that_stopped_part_way_fetches_only_the_missing_files(fake_hub: FakeHub, tmp_path: Path) -> None:
    pulled = pull_from(fake_hub, tmp_path)
    weights = pulled.path / "model.safetensors"
    weights.resolve().unlink()
    weights.unlink()
    downloads_before = len([request for request in fake_hub.requests if request[0] == "GET"])

    again = pull_from(fake_hub, tmp_path, revision=pulled.commit_sha)

    assert again.from_cache is False and again.files == SAFE_FILES
    downloads = [path for method, path in fake_hub.requests if method == "GET"][downloads_before:]
    fetched = [path for path in downloads if "/resolve/" in path]
    assert fetched == [f"/{SENTIMENT}/resolve/{pulled.commit_sha}/model.safetensors"]


def test_a_repo_with_only_pickled_weights_is_refused_before_any_download(fake_hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(NoSafeWeights, match="pytorch_model.bin") as raised:
        pull_from(fake_hub, tmp_path, repo_id="acme/tiny-pickled")

    assert "Pickle-based weights are never downloaded" in str(raised.value)
    assert fake_hub.requested("/resolve/") == []


def test_allow_patterns_choose_files_but_never_unlock_pickles(fake_hub: FakeHub, tmp_path: Path) -> None:
    snapshot = pull_from(fake_hub, tmp_path, allow_patterns=["*.json", "*.bin", "onnx/*"])

    assert snapshot.files == ("config.json", "onnx/model.onnx", "tokenizer.json")
    assert fake_hub.requested("pytorch_model.bin") == []


# -- errors and offline --------------------------------------------------------------------------


def test_offline_mode_fails_fast_for_a_repo_not_in_the_cache(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    started = time.monotonic()
    with pytest.raises(HubUnavailable) as raised:
        pull_from(fake_hub, tmp_path)

    assert time.monotonic() - started < 1
    message = str(raised.value)
    assert "HF_HUB_OFFLINE" in message and SENTIMENT in message and "keep working" in message
    assert fake_hub.requests == []


def test_offline_mode_still_pulls_a_revision_complete_in_the_cache(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pulled = pull_from(fake_hub, tmp_path)
    asked = len(fake_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    for revision in ("main", pulled.commit_sha):
        snapshot = pull_from(fake_hub, tmp_path, revision=revision)
        assert (snapshot.from_cache, snapshot.commit_sha, snapshot.files) == (True, pulled.commit_sha, SAFE_FILES)
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE"):
        latest_revision(SENTIMENT, endpoint=fake_hub.endpoint)
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE"):
        discover("tiny", task=None, endpoint=fake_hub.endpoint)
    assert len(fake_hub.requests) == asked


def test_a_hub_that_refuses_connections_fails_fast(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.stop()
    calls = {
        "pull": lambda: pull_from(fake_hub, tmp_path),
        "latest_revision": lambda: latest_revision(SENTIMENT, endpoint=fake_hub.endpoint),
        "discover": lambda: discover("tiny", task="embeddings", endpoint=fake_hub.endpoint),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(HubUnavailable, match="unreachable") as raised:
            call()
        assert time.monotonic() - started < 2, name
        assert "cache keep working" in str(raised.value)


def test_a_hub_that_never_answers_fails_after_the_timeout(tmp_path: Path) -> None:
    with silent_endpoint() as endpoint:
        calls = {
            "pull": lambda: pull(SENTIMENT, revision="main", cache_dir=tmp_path, endpoint=endpoint, timeout=0.5),
            "latest_revision": lambda: latest_revision(SENTIMENT, endpoint=endpoint, timeout=0.5),
            "discover": lambda: discover("tiny", task=None, endpoint=endpoint, timeout=0.5),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(HubUnavailable, match="Timeout"):
                call()
            assert time.monotonic() - started < 3, name


def test_an_unknown_repo_is_repo_not_found_and_the_message_says_how_to_authenticate(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    with pytest.raises(RepoNotFound) as raised:
        pull_from(fake_hub, tmp_path, repo_id="acme/does-not-exist")

    assert "acme/does-not-exist" in str(raised.value) and "HF_TOKEN" in str(raised.value)


def test_an_unknown_revision_is_revision_not_found(fake_hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(RevisionNotFound, match="'v9' does not exist in acme/tiny-sentiment"):
        pull_from(fake_hub, tmp_path, revision="v9")
    with pytest.raises(RevisionNotFound):
        latest_revision(SENTIMENT, revision="v9", endpoint=fake_hub.endpoint)


def test_a_private_repo_needs_a_token_from_the_argument_or_hf_token(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = "acme/tiny-private"
    with pytest.raises(RepoNotFound, match="HF_TOKEN"):
        pull_from(fake_hub, tmp_path / "anonymous", repo_id=private)

    assert pull_from(fake_hub, tmp_path / "argument", repo_id=private, token=TOKEN).files == SAFE_FILES
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert pull_from(fake_hub, tmp_path / "environment", repo_id=private).files == SAFE_FILES


def test_the_endpoint_comes_from_hf_endpoint_as_set_when_called(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub froze HF_ENDPOINT at import; hub.py reads it again on every call.
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)

    assert latest_revision(SENTIMENT) == shas(fake_hub)[-1]


# -- updates -------------------------------------------------------------------------------------


def test_latest_revision_and_check_update_see_a_new_commit(fake_hub: FakeHub) -> None:
    first, second = shas(fake_hub)
    endpoint = fake_hub.endpoint

    assert latest_revision(SENTIMENT, endpoint=endpoint) == second
    assert latest_revision(SENTIMENT, revision="v1", endpoint=endpoint) == first
    assert check_update(SENTIMENT, second, endpoint=endpoint).state == "up_to_date"
    behind = check_update(SENTIMENT, first, endpoint=endpoint)
    assert (behind.state, behind.latest_sha, behind.update_available) == ("update_available", second, True)

    third = fake_hub.repos[SENTIMENT].commit(sentiment_files(("bad", "good")))

    status = check_update(SENTIMENT, second, endpoint=endpoint)
    assert (status.state, status.latest_sha, status.error) == ("update_available", third, None)


def test_check_update_reports_hub_problems_instead_of_raising(fake_hub: FakeHub) -> None:
    missing = check_update("acme/gone", "0" * 40, endpoint=fake_hub.endpoint)
    assert (missing.state, missing.latest_sha) == ("error", None)
    assert "acme/gone was not found" in missing.error

    fake_hub.stop()
    down = check_update(SENTIMENT, shas(fake_hub)[0], endpoint=fake_hub.endpoint)
    assert down.state == "error" and "unreachable" in down.error and not down.update_available


# -- discover ------------------------------------------------------------------------------------


def test_discover_returns_the_models_of_a_task_most_downloaded_first(fake_hub: FakeHub) -> None:
    found = discover("tiny", task="embeddings", endpoint=fake_hub.endpoint)

    assert [model.repo_id for model in found] == ["acme/tiny-embeddings", "acme/tiny-features"]
    assert [model.pipeline_tag for model in found] == ["sentence-similarity", "feature-extraction"]
    assert found[0].downloads == 900 and found[0].last_modified is not None
    speech = discover("tiny", task="speech", endpoint=fake_hub.endpoint)
    assert [model.repo_id for model in speech] == ["acme/tiny-whisper"]


def test_discover_without_a_task_searches_every_model_up_to_the_limit(fake_hub: FakeHub) -> None:
    found = discover("TINY", task=None, limit=3, endpoint=fake_hub.endpoint)

    # Private repos are not listed; "other/large-embeddings" does not match the query.
    assert [model.repo_id for model in found] == ["acme/tiny-embeddings", "acme/tiny-sentiment", "acme/tiny-whisper"]
    assert fake_hub.requested("/api/models") and all("other/" not in m.repo_id for m in found)


def test_discover_refuses_an_unknown_task(fake_hub: FakeHub) -> None:
    with pytest.raises(ValueError, match="Unknown task 'summaries'"):
        discover("tiny", task="summaries", endpoint=fake_hub.endpoint)


# -- which files a pull selects -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        pytest.param(
            ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx", "onnx/model_qint8.onnx",
             "openvino/openvino_model.bin", "openvino/openvino_model.xml", "1_Pooling/config.json", "modules.json",
             "tokenizer.json", "vocab.txt", "README.md", ".gitattributes", "tf_model.h5", "rust_model.ot"],
            ["1_Pooling/config.json", "README.md", "config.json", "model.safetensors", "modules.json",
             "tokenizer.json", "vocab.txt"],
            id="sentence-transformers: safetensors only",
        ),
        pytest.param(
            ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json"],
            ["config.json", "model.bin", "preprocessor_config.json", "tokenizer.json", "vocabulary.txt"],
            id="CTranslate2 Whisper",
        ),
        pytest.param(
            ["ct2/config.json", "ct2/model.bin", "ct2/shared_vocabulary.json", "source.spm", "target.spm",
             "pytorch_model.bin", "config.json"],
            ["config.json", "ct2/config.json", "ct2/model.bin", "ct2/shared_vocabulary.json", "source.spm",
             "target.spm"],
            id="CTranslate2 translator in a folder",
        ),
        pytest.param(
            ["model.bin", "README.md", ".gitattributes"], ["README.md", "model.bin"], id="fastText .bin"
        ),
        pytest.param(["lid.176.ftz", "lid.176.bin", "NOTICE.MD"], ["lid.176.bin", "lid.176.ftz"], id="fastText pair"),
        pytest.param(
            ["config.json", "model.onnx", "pytorch_model.bin", "tokenizer.json"],
            ["config.json", "model.onnx", "tokenizer.json"],
            id="ONNX when there is no safetensors",
        ),
        pytest.param(
            ["SmolLM2.Q4_1.gguf", "SmolLM2.Q8_0.gguf", "README.md"],
            ["README.md", "SmolLM2.Q4_1.gguf", "SmolLM2.Q8_0.gguf"],
            id="GGUF",
        ),
        pytest.param(
            ["config.json", "pytorch_model.bin", "model.bin", "adapter_model.bin", "weights.pt", "model.ckpt"],
            ["config.json"],
            id="pickles and a model.bin beside a transformers config",
        ),
    ],
)
def test_select_files_picks_one_safe_weight_format_and_the_files_needed_to_load_it(
    listing: list[str], expected: list[str]
) -> None:
    assert select_files(listing) == expected


def test_select_files_with_patterns_never_selects_a_pickle() -> None:
    listing = ["config.json", "pytorch_model.bin", "training_args.bin", "model.safetensors", "optimizer.pt"]

    assert select_files(listing, allow_patterns=["*"]) == ["config.json", "model.safetensors"]
    assert select_files(listing, allow_patterns=["*.bin", "*.pt"]) == []
    assert weight_files(listing) == ["model.safetensors"]
