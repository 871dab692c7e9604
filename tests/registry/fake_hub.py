"""A real HTTP server on 127.0.0.1 speaking the Hugging Face Hub endpoints huggingface_hub 2.4 calls.

Enough of the hub for `model_info`, `list_models`, `list_repo_tree` and `snapshot_download`:
    GET  /api/models                               search, pipeline_tag, sort=downloads, limit
    GET  /api/models/{repo}[/revision/{rev}]       id, sha, siblings, pipeline_tag, …
    GET  /api/models/{repo}/tree/{rev}             the file listing (recursive)
    HEAD /{repo}/resolve/{rev}/{path}              X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{rev}/{path}              the bytes (Range supported, for resumed downloads)
Errors carry the X-Error-Code headers the client maps to its exceptions: 401 RepoNotFound for an
unknown repo or a private one without the token, 404 RevisionNotFound, 404 EntryNotFound.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

API_MODEL = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?/?$")
API_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class Commit:
    sha: str
    files: dict[str, bytes]
    date: datetime


@dataclass
class FakeRepo:
    repo_id: str
    pipeline_tag: str | None = None
    library_name: str | None = None
    downloads: int = 0
    likes: int = 0
    private: bool = False
    commits: list[Commit] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # tag name → commit sha

    def commit(self, files: dict[str, bytes], *, tag: str | None = None) -> str:
        """Add a commit on main (the newest commit is main's head) and return its sha."""
        digest = hashlib.sha1(f"{self.repo_id}:{len(self.commits)}".encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        sha = digest.hexdigest()
        self.commits.append(Commit(sha=sha, files=dict(files), date=datetime.now(timezone.utc)))
        if tag is not None:
            self.tags[tag] = sha
        return sha

    def resolve(self, revision: str | None) -> Commit | None:
        if revision in (None, "main"):
            return self.commits[-1] if self.commits else None
        sha = self.tags.get(revision, revision)
        return next((commit for commit in self.commits if commit.sha == sha), None)


def etag_of(content: bytes) -> str:
    """The ETag the fake hub gives a file (and so the blob name in the client's cache)."""
    return hashlib.sha256(content).hexdigest()


def hub_date(moment: datetime) -> str:
    """The hub's date format, the only one the client parses: 2024-05-01T12:00:00.000Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """The server and its repos. `stop()` closes the port: the hub is then "down" (connection refused)."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of every ranged download
        # path → bytes: the next GET of that path stops after so many bytes and drops the connection
        self.cut_once: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def add(self, repo: FakeRepo) -> FakeRepo:
        with self._lock:
            self.repos[repo.repo_id] = repo
        return repo

    def start(self) -> str:
        hub = self

        class Handler(HubRequestHandler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def requested(self, path_fragment: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(method, path) for method, path in self.requests if path_fragment in path]

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class HubRequestHandler(BaseHTTPRequestHandler):
    # HTTP/1.0: the server closes every connection after its answer, so once stopped no pooled
    # keep-alive connection can still be served by a leftover handler thread.
    protocol_version = "HTTP/1.0"
    fake: FakeHub

    def log_message(self, *args: object) -> None:
        pass  # keep test output clean

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        with self.fake._lock:
            self.fake.requests.append((self.command, path))
            if self.headers.get("Range"):
                self.fake.ranges.append((path, self.headers["Range"]))
        if url.path.rstrip("/") == "/api/models":
            return self._list_models(query, head=head)
        if match := API_TREE.match(url.path):
            return self._tree(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"] or ""))
        if match := API_MODEL.match(url.path):
            return self._model_info(unquote(match["repo"]), unquote(match["rev"]) if match["rev"] else None)
        if match := RESOLVE.match(url.path):
            return self._resolve(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]), head=head)
        self._json(404, {"error": "Not found"})

    # -- endpoints -------------------------------------------------------------------------------

    def _list_models(self, query: dict[str, str], *, head: bool) -> None:
        search = query.get("search", "").lower()
        tag = query.get("pipeline_tag")
        with self.fake._lock:
            repos = [
                repo
                for repo in self.fake.repos.values()
                if not repo.private and search in repo.repo_id.lower() and (tag is None or repo.pipeline_tag == tag)
            ]
        if query.get("sort") == "downloads":
            repos.sort(key=lambda repo: repo.downloads, reverse=True)
        repos = repos[: int(query["limit"])] if "limit" in query else repos
        body = [self._summary(repo) for repo in repos]
        self._json(200, body, head=head)

    def _model_info(self, repo_id: str, revision: str | None) -> None:
        repo = self._repo_or_401(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        body = self._summary(repo) | {
            "sha": commit.sha,
            "lastModified": hub_date(commit.date),
            "siblings": [{"rfilename": name} for name in sorted(commit.files)],
        }
        self._json(200, body)

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        repo = self._repo_or_401(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        entries: list[dict] = []
        folders: set[str] = set()
        for name in sorted(commit.files):
            if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                continue
            parts = name.split("/")
            for depth in range(1, len(parts)):
                folders.add("/".join(parts[:depth]))
            content = commit.files[name]
            entries.append({"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)})
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)]
        self._json(200, entries)

    def _resolve(self, repo_id: str, revision: str, filename: str, *, head: bool) -> None:
        repo = self._repo_or_401(repo_id)
        if repo is None:
            return
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        content = commit.files.get(filename)
        if content is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=commit.sha)
        status, body, extra = 200, content, {}
        start = self._range_start(len(content))
        if start:
            status, body = 206, content[start:]
            extra["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit.sha)
        self.send_header("ETag", f'"{etag_of(content)}"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        with self.fake._lock:
            cut = self.fake.cut_once.pop(unquote(urlsplit(self.path).path), None)
        # A transfer that dies part-way: Content-Length promised the whole body, the socket closes early.
        self.wfile.write(body if cut is None else body[:cut])

    # -- plumbing --------------------------------------------------------------------------------

    def _repo_or_401(self, repo_id: str) -> FakeRepo | None:
        with self.fake._lock:
            repo = self.fake.repos.get(repo_id)
        authorized = self.headers.get("Authorization") == f"Bearer {self.fake.token}"
        if repo is None or (repo.private and not authorized):
            # What the real hub does for both: 401, so a private repo's existence does not leak.
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _range_start(self, size: int) -> int:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        return int(match[1]) if match and int(match[1]) < size else 0

    def _summary(self, repo: FakeRepo) -> dict:
        head = repo.resolve("main")
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "private": repo.private,
            "pipeline_tag": repo.pipeline_tag,
            "library_name": repo.library_name,
            "tags": [tag for tag in (repo.library_name, repo.pipeline_tag) if tag],
            "downloads": repo.downloads,
            "likes": repo.likes,
            "lastModified": hub_date(head.date) if head else None,
        }

    def _error(self, status: int, error_code: str, message: str, *, commit: str | None = None) -> None:
        extra = {"X-Error-Code": error_code, "X-Error-Message": message}
        if commit is not None:
            extra["X-Repo-Commit"] = commit
        self._json(status, {"error": message}, extra=extra)

    def _json(self, status: int, body: object, *, head: bool = False, extra: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(payload)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers: a hub that hangs rather than refuses."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections complete in the backlog; nobody ever reads them
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
