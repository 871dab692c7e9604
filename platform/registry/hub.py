"""Hugging Face Hub access for the registry: pinned, resumable pulls of safe weight formats, update checks, search."""
from __future__ import annotations

import errno
import glob
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import httpx2
from huggingface_hub import HfApi, ModelInfo, constants, get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HFValidationError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name
from huggingface_hub.utils import filter_repo_objects, get_session
from huggingface_hub.utils import tqdm as hub_tqdm

# Connect/read timeout for every call that decides whether the hub is reachable. The library's own
# clients have no timeout and its listing calls retry network errors for ~20 s; a command or a
# scheduled job must rather say "unreachable" within seconds and carry on with cached models.
DEFAULT_TIMEOUT = 4.0

# Our task names → the hub's pipeline tags, most specific first (the hub filters on one tag per query).
TASK_PIPELINE_TAGS: dict[str, tuple[str, ...]] = {
    "translation": ("translation",),
    "language_id": ("text-classification",),
    "classification": ("text-classification", "zero-shot-classification"),
    "embeddings": ("sentence-similarity", "feature-extraction"),
    "rerank": ("text-ranking", "text-classification"),
    "speech": ("automatic-speech-recognition",),
    "intent": ("automatic-speech-recognition", "audio-classification"),
    "generation": ("text-generation",),
}

# Formats that unpickle (and so can run code) when loaded, or that embed code. Never downloaded,
# whatever the patterns say.
UNSAFE_PATTERNS: tuple[str, ...] = (
    "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib", "*.h5", "*.keras",
    "*pytorch_model*.bin", "*adapter_model*.bin", "*training_args.bin", "*optimizer*.bin", "*scheduler*.bin",
)

# Tokenizers, configs, label maps, SentencePiece models, the model card: small and needed to load.
SUPPORT_PATTERNS: tuple[str, ...] = ("*.json", "*.txt", "*.model", "*.spm", "*.tiktoken", "README.md")

# Writes refused for lack of room: the disk is full, a quota is used up, or a file size limit is reached.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# What the client raises when talking to the hub goes wrong (its HTTP and cache errors are OSErrors).
HUB_FAILURES: tuple[type[Exception], ...] = (OSError, httpx2.HTTPError, HFValidationError)

CT2_VOCABULARY_PATTERNS: tuple[str, ...] = (
    "vocabulary.*", "shared_vocabulary.*", "source_vocabulary.*", "target_vocabulary.*",
)


class HubError(Exception):
    """Something went wrong talking to the Hugging Face Hub."""


class CacheFull(HubError):
    """The model cache's disk (or the process's file size limit) refused the bytes."""


class HubUnavailable(HubError):
    """The hub is offline (HF_HUB_OFFLINE) or cannot be reached; cached models are unaffected."""


class RepoNotFound(HubError):
    """The repository does not exist, or it is private/gated and the token cannot read it."""


class RevisionNotFound(HubError):
    """The repository exists but the branch, tag or commit does not."""


class NoSafeWeights(HubError):
    """The repository has no weights in a format that loads without unpickling."""


@dataclass(frozen=True)
class PulledSnapshot:
    repo_id: str
    revision: str  # what was asked for: a branch, a tag or a commit sha
    commit_sha: str  # what was downloaded: pin this
    path: Path  # the snapshot folder in the cache, ready to load from
    files: tuple[str, ...]  # paths relative to `path`
    size_bytes: int
    from_cache: bool  # served from the cache alone: commit already complete, offline, or hub unreachable


@dataclass(frozen=True)
class UpdateStatus:
    repo_id: str
    pinned_sha: str
    state: Literal["up_to_date", "update_available", "error"]
    latest_sha: str | None = None
    error: str | None = None

    @property
    def update_available(self) -> bool:
        return self.state == "update_available"


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    pipeline_tag: str | None
    library_name: str | None
    downloads: int | None
    likes: int | None
    tags: tuple[str, ...]
    last_modified: datetime | None
    gated: bool | str | None


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub URL to talk to: the argument, else HF_ENDPOINT as it is *now*.

    huggingface_hub reads HF_ENDPOINT once, at import (`constants.ENDPOINT`); reading it again here
    lets a process (or a test) point at another hub after the library was imported.
    """
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as it is now, or as the library saw it at import."""
    from_env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or from_env.strip().upper() in constants.ENV_VARS_TRUE_VALUES


def select_files(filenames: Iterable[str], *, allow_patterns: list[str] | None = None) -> list[str]:
    """The files of a repo that `pull` downloads, sorted.

    Without `allow_patterns`: the support files (configs, tokenizers, SentencePiece models, labels)
    plus the weights of one format only, the first present of safetensors, CTranslate2, fastText,
    ONNX, GGUF — many repos carry the same weights several times (safetensors + ONNX variants +
    OpenVINO) and one copy is enough. With `allow_patterns` (fnmatch, as in `snapshot_download`):
    the files that match. Either way pickle-based files are never selected, and a `.bin` only when
    its neighbours show it is a CTranslate2 or fastText model.
    """
    files = sorted(set(filenames))
    safe = [name for name in files if _is_safe(name, files)]
    if allow_patterns is not None:
        return list(filter_repo_objects(safe, allow_patterns=allow_patterns))
    support = [name for name in safe if _matches(name, SUPPORT_PATTERNS)]
    for weights in _weight_groups(safe):
        if weights:
            return sorted(set(support) | set(weights))
    return support


def weight_files(filenames: Iterable[str]) -> list[str]:
    """The weight files among `filenames`, in any safe format."""
    files = sorted(set(filenames))
    safe = [name for name in files if _is_safe(name, files)]
    return sorted({name for group in _weight_groups(safe) for name in group})


def pull(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: Path,
    token: str | None = None,
    allow_patterns: list[str] | None = None,
    progress: bool = True,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    on_files: Callable[[int, int], None] | None = None,
) -> PulledSnapshot:
    """Download `repo_id` at `revision` into the hub cache at `cache_dir` and return the pinned snapshot.

    A branch or tag is first resolved to its commit sha and that exact commit is downloaded, so
    the files and the sha recorded always agree. A transfer cut part-way resumes with a Range
    request, and a pull that stopped part-way fetches only the files still missing (the library
    discards a partial file left by a killed process). A commit that is already complete in the
    cache is returned without contacting the hub. Offline (HF_HUB_OFFLINE) or with the hub
    unreachable, a revision complete in the cache still pulls and anything else raises
    `HubUnavailable`. `token` defaults to HF_TOKEN, then the saved login. `on_files(done, total)` hears of
    each file fetched (for a job's progress; the bars stay silent).
    """
    cache_dir = Path(cache_dir)
    endpoint = hub_endpoint(endpoint)
    wanted = revision or constants.DEFAULT_REVISION

    if is_offline():
        cached = _cached_snapshot(repo_id, revision=wanted, cache_dir=cache_dir, allow_patterns=allow_patterns)
        if cached is None:
            raise HubUnavailable(
                f"Hugging Face Hub access is disabled (HF_HUB_OFFLINE is set) and {repo_id}@{wanted} is not "
                f"complete in the cache at {cache_dir}. Models already in the cache keep working; unset "
                "HF_HUB_OFFLINE to download it."
            )
        return _snapshot(repo_id, revision=wanted, path=cached, from_cache=True)

    if REGEX_COMMIT_HASH.fullmatch(wanted):
        # A commit never changes: if it is complete here there is nothing to ask the hub.
        cached = _cached_snapshot(
            repo_id, revision=wanted, cache_dir=cache_dir, allow_patterns=allow_patterns, require_listing=True
        )
        if cached is not None:
            return _snapshot(repo_id, revision=wanted, path=cached, from_cache=True)

    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=revision, timeout=timeout, token=token)
    except HUB_FAILURES as error:
        translated = _translate(error, repo_id=repo_id, revision=wanted, endpoint=endpoint)
        if isinstance(translated, HubUnavailable):
            cached = _cached_snapshot(repo_id, revision=wanted, cache_dir=cache_dir, allow_patterns=allow_patterns)
            if cached is not None:
                return _snapshot(repo_id, revision=wanted, path=cached, from_cache=True)
        raise translated from error
    if not info.sha:
        raise HubError(f"The hub at {endpoint} did not say which commit {repo_id}@{wanted} is.")

    available = [sibling.rfilename for sibling in info.siblings or []]
    selected = select_files(available, allow_patterns=allow_patterns)
    if allow_patterns is None and not weight_files(selected):
        skipped = [name for name in available if _matches(name, UNSAFE_PATTERNS) or name.endswith(".bin")]
        raise NoSafeWeights(
            f"{repo_id}@{info.sha} has no weights in a safe format (safetensors, CTranslate2, fastText, ONNX, "
            f"GGUF); found {', '.join(skipped) or 'no weight files'}. Pickle-based weights are never downloaded: "
            "use a repo that ships safetensors, or pass allow_patterns for the files you want."
        )
    if not selected:
        raise HubError(f"No file of {repo_id}@{info.sha} matches allow_patterns {allow_patterns!r}.")

    try:
        folder = snapshot_download(
            repo_id,
            revision=info.sha,
            cache_dir=cache_dir,
            token=token,
            endpoint=endpoint,
            # Exact names: the hub's listing is authoritative and we already chose among it.
            allow_patterns=[glob.escape(name) for name in selected],
            etag_timeout=timeout,
            tqdm_class=_files_progress(on_files) if on_files else (None if progress else _SilentProgress),
        )
    except HUB_FAILURES as error:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise CacheFull(
                f"The model cache at {cache_dir} has no room for {repo_id}@{info.sha} ({error.strerror}). Free space "
                "there or point MODELGATE_MODEL_CACHE at a larger disk, then pull again: the files already fetched "
                "are kept, and the model is not registered until every file is there."
            ) from None
        raise _translate(error, repo_id=repo_id, revision=wanted, endpoint=endpoint) from error

    if wanted != info.sha:
        _remember_ref(repo_id, revision=wanted, commit_sha=info.sha, cache_dir=cache_dir)
    return _snapshot(repo_id, revision=wanted, path=Path(folder), from_cache=False)


def latest_revision(
    repo_id: str,
    *,
    revision: str = "main",
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """The commit sha that `revision` of `repo_id` points to on the hub right now."""
    endpoint = hub_endpoint(endpoint)
    if is_offline():
        raise HubUnavailable(
            f"Hugging Face Hub access is disabled (HF_HUB_OFFLINE is set): cannot look up {repo_id}@{revision}. "
            "Models already in the cache keep working."
        )
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, revision=revision, timeout=timeout, token=token, expand=["sha"]
        )
    except HUB_FAILURES as error:
        raise _translate(error, repo_id=repo_id, revision=revision, endpoint=endpoint) from error
    if not info.sha:
        raise HubError(f"The hub at {endpoint} did not say which commit {repo_id}@{revision} is.")
    return info.sha


def check_update(
    repo_id: str,
    pinned_sha: str,
    *,
    revision: str = "main",
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> UpdateStatus:
    """Compare the pinned commit with what `revision` points to now; hub errors become an "error" status.

    Never raises for hub problems, so a job checking many models reports each one and carries on.
    """
    try:
        latest = latest_revision(repo_id, revision=revision, token=token, endpoint=endpoint, timeout=timeout)
    except HubError as error:
        return UpdateStatus(repo_id=repo_id, pinned_sha=pinned_sha, state="error", error=str(error))
    state: Literal["up_to_date", "update_available"] = "up_to_date" if latest == pinned_sha else "update_available"
    return UpdateStatus(repo_id=repo_id, pinned_sha=pinned_sha, state=state, latest_sha=latest)


def discover(
    query: str,
    *,
    task: str | None,
    limit: int = 20,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[HubModel]:
    """Models on the hub whose name matches `query`, for one of our tasks (or any), most downloaded first."""
    if task is not None and task not in TASK_PIPELINE_TAGS:
        raise ValueError(f"Unknown task {task!r}: expected one of {', '.join(sorted(TASK_PIPELINE_TAGS))}.")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}.")
    endpoint = hub_endpoint(endpoint)
    if is_offline():
        raise HubUnavailable(
            "Hugging Face Hub access is disabled (HF_HUB_OFFLINE is set): cannot search it. "
            "Models already in the cache keep working."
        )
    _probe(endpoint, timeout=timeout)

    api = HfApi(endpoint=endpoint, token=token)
    found: dict[str, HubModel] = {}
    try:
        for pipeline_tag in TASK_PIPELINE_TAGS[task] if task else (None,):
            for info in api.list_models(
                search=query or None, pipeline_tag=pipeline_tag, sort="downloads", limit=limit, token=token
            ):
                found.setdefault(info.id, _hub_model(info))
    except HUB_FAILURES as error:
        raise _translate(error, repo_id=None, revision=None, endpoint=endpoint) from error
    ranked = sorted(found.values(), key=lambda model: model.downloads or 0, reverse=True)
    return ranked[:limit]


class _SilentProgress(hub_tqdm):
    """The library's progress bar, always disabled (for jobs and tests: no output)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _files_progress(report: Callable[[int, int], None]) -> type[hub_tqdm]:
    """A silent progress bar class that reports files fetched of the snapshot's total; the library makes
    other bars (bytes) of the same class, which report nothing."""

    class _FilesProgress(_SilentProgress):
        def __init__(self, *args, **kwargs) -> None:
            self._files = str(kwargs.get("desc") or "").startswith("Fetching")
            self._expected = int(kwargs.get("total") or 0)
            self._fetched = 0
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._files:
                self._fetched += int(n or 0)
                report(self._fetched, self._expected)
            return super().update(n)

    return _FilesProgress


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _siblings(name: str, files: list[str]) -> list[str]:
    folder = posixpath.dirname(name)
    return [posixpath.basename(other) for other in files if posixpath.dirname(other) == folder]


def _is_ctranslate2_model(name: str, files: list[str]) -> bool:
    if posixpath.basename(name) != "model.bin":
        return False
    neighbours = _siblings(name, files)
    return "config.json" in neighbours and any(_matches(other, CT2_VOCABULARY_PATTERNS) for other in neighbours)


def _is_fasttext_model(name: str, files: list[str]) -> bool:
    if name.endswith(".ftz"):
        return True
    if not name.endswith(".bin") or _matches(name, UNSAFE_PATTERNS):
        return False
    neighbours = _siblings(name, files)
    # A config.json beside it means a framework's weights; an .xml of the same stem means OpenVINO.
    stem = posixpath.basename(name)[: -len(".bin")]
    return "config.json" not in neighbours and f"{stem}.xml" not in neighbours


def _is_safe(name: str, files: list[str]) -> bool:
    if _matches(name, UNSAFE_PATTERNS):
        return False
    if name.endswith(".bin"):
        return _is_ctranslate2_model(name, files) or _is_fasttext_model(name, files)
    return True


def _weight_groups(safe: list[str]) -> list[list[str]]:
    """Weight files by format, in order of preference."""
    return [
        [name for name in safe if name.endswith(".safetensors")],
        [name for name in safe if _is_ctranslate2_model(name, safe)],
        [name for name in safe if _is_fasttext_model(name, safe)],
        [name for name in safe if _matches(name, ("*.onnx", "*.onnx_data", "*.onnx.data"))],
        [name for name in safe if name.endswith(".gguf")],
    ]


def _cached_snapshot(
    repo_id: str,
    *,
    revision: str,
    cache_dir: Path,
    allow_patterns: list[str] | None,
    require_listing: bool = False,
) -> Path | None:
    """The snapshot folder for `revision` if every file `pull` would select is in the cache, else None.

    The file listing of the commit, saved by the first pull, says what "complete" means. Without it
    the folder can only be taken as it is: good enough offline, not when the hub could fill gaps.
    """
    try:
        listing = [entry.path for entry in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)]
    except CachedRepoTreeNotFoundError:
        if require_listing:
            return None
        patterns = allow_patterns
    else:
        patterns = [glob.escape(name) for name in select_files(listing, allow_patterns=allow_patterns)]
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True, allow_patterns=patterns
            )
        )
    except (OSError, HFValidationError):  # LocalEntryNotFoundError and IncompleteSnapshotError are OSErrors
        return None
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def _snapshot(repo_id: str, *, revision: str, path: Path, from_cache: bool) -> PulledSnapshot:
    files = sorted(str(file.relative_to(path).as_posix()) for file in path.rglob("*") if file.is_file())
    return PulledSnapshot(
        repo_id=repo_id,
        revision=revision,
        commit_sha=path.name,  # snapshot folders are named after their commit
        path=path,
        files=tuple(files),
        size_bytes=sum((path / name).stat().st_size for name in files),
        from_cache=from_cache,
    )


def _remember_ref(repo_id: str, *, revision: str, commit_sha: str, cache_dir: Path) -> None:
    """Record branch/tag → commit in the cache's refs/, as the library does, so an offline pull by name works.

    We download by sha (to pin exactly what model_info reported), and the library only writes refs
    for the names it resolved itself.
    """
    ref = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if ref.is_file() and ref.read_text().strip() == commit_sha:
        return
    partial = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
    partial.write_text(commit_sha)
    os.replace(partial, ref)  # atomic: a concurrent reader never sees a half-written sha


def _probe(endpoint: str, *, timeout: float) -> None:
    """Raise HubUnavailable unless the hub answers within `timeout`.

    `HfApi.list_models` takes no timeout and retries network errors with backoff (about 20 s); one
    quick request first keeps `discover` fast when the hub is down. Any HTTP answer means reachable.
    """
    try:
        get_session().head(f"{endpoint}/api/models", params={"limit": 1}, timeout=timeout)
    except HUB_FAILURES as error:
        raise _translate(error, repo_id=None, revision=None, endpoint=endpoint) from error


def _hub_model(info: ModelInfo) -> HubModel:
    return HubModel(
        repo_id=info.id,
        pipeline_tag=info.pipeline_tag,
        library_name=info.library_name,
        downloads=info.downloads,
        likes=info.likes,
        tags=tuple(info.tags or ()),
        last_modified=info.last_modified,
        gated=info.gated,
    )


def _translate(error: Exception, *, repo_id: str | None, revision: str | None, endpoint: str) -> HubError:
    """One of our exception types, with a message an operator can act on, for any hub failure."""
    if isinstance(error, HubError):
        return error
    unreachable = (
        f"The Hugging Face Hub at {endpoint} is unreachable ({{}}). Models already in the cache keep working, "
        "and pulls of revisions complete in the cache still succeed."
    )
    if isinstance(error, OfflineModeIsEnabled):
        return HubUnavailable(
            "Hugging Face Hub access is disabled (HF_HUB_OFFLINE is set). Models already in the cache keep working."
        )
    if isinstance(error, httpx2.TransportError):
        return HubUnavailable(unreachable.format(f"{type(error).__name__}: {error}"))
    if isinstance(error, RevisionNotFoundError):
        return RevisionNotFound(f"Revision {revision!r} does not exist in {repo_id} on {endpoint}.")
    if isinstance(error, (RepositoryNotFoundError, GatedRepoError)):
        why = "is gated and the token has not been granted access" if isinstance(error, GatedRepoError) else (
            "does not exist, or it is private or gated and no token with access was sent"
        )
        return RepoNotFound(
            f"{repo_id} was not found on {endpoint}: it {why}. For private or gated repos set HF_TOKEN "
            "(or pass token=...) to a token that can read it."
        )
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status >= 500:
            return HubUnavailable(unreachable.format(f"it answered HTTP {status}"))
        if status == 401:
            return RepoNotFound(f"{endpoint} refused the token for {repo_id} (HTTP 401): check HF_TOKEN.")
        return HubError(f"The hub at {endpoint} answered HTTP {status} for {repo_id or 'the search'}: {error}")
    if isinstance(error, HFValidationError):
        return HubError(f"{repo_id!r} is not a valid repo id or revision: {error}")
    if isinstance(error, LocalEntryNotFoundError):
        # snapshot_download falls back to the cache when a file download fails, and says so this way.
        return HubUnavailable(unreachable.format(str(error).splitlines()[0]))
    return HubError(f"Talking to the hub at {endpoint} about {repo_id or 'models'} failed: {error}")
