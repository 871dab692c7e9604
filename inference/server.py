"""The model server: one process per machine around one ModelPool, so that every web worker's requests
share its loaded models and batch together. It listens on a unix socket (readable by its own user
only) or on TCP, where every connection must first present the shared secret.

One request at a time per connection; a client keeps a connection per thread. Requests carry their
deadline; a client that goes away cancels what it waited for (queued items are dropped, a stream
stops its model)."""
from __future__ import annotations

import hmac
import logging
import os
import select
import socket
import socketserver
import stat
import threading
import time
from concurrent.futures import ALL_COMPLETED, Future, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inference import wire
from inference.errors import InferenceError, InferenceTimeout, InvalidInput, ModelServerUnavailable
from inference.memory import HeapTrimmer
from inference.pool import ModelPool

logger = logging.getLogger("modelgate.modelserver")

POLL_SECONDS = 0.05  # how often a waiting request looks whether its client is still there
WORK_OPERATIONS = {"infer", "stream", "load", "probe", "preload", "unload"}  # operations that allocate and free model buffers


class Address:
    """`unix:///path/to.sock` or `tcp://host:port`."""

    def __init__(self, text: str):
        parts = urlsplit(text)
        if parts.scheme == "unix" and parts.path:
            self.kind, self.path, self.host, self.port = "unix", Path(parts.path), None, None
        elif parts.scheme == "tcp" and parts.hostname and parts.port is not None:
            self.kind, self.path, self.host, self.port = "tcp", None, parts.hostname, parts.port
        else:
            raise ValueError(f"A model server address is unix:///path or tcp://host:port, not {text!r}.")
        self.text = text

    def __str__(self) -> str:
        return self.text

    def connect(self, timeout: float) -> socket.socket:
        if self.kind == "unix":
            # A full listen backlog refuses a unix connect at once (EAGAIN) rather than making it wait:
            # try again until the timeout, as a TCP connect would wait for the server to accept.
            deadline = time.monotonic() + timeout
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(str(self.path))
                    break
                except BlockingIOError:
                    sock.close()
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.005)
                except BaseException:
                    sock.close()
                    raise
        else:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class ModelServer:
    """Serves `pool` at `address` until shutdown(). `secret` is required for TCP. `trim_seconds` > 0 hands
    the heap's free pages back to the system after inference work (inference.memory.HeapTrimmer);
    `heap` is the allocator settings the process runs with (inference.memory), reported by ping."""

    def __init__(self, pool: ModelPool, *, address: str, secret: str | None = None, trim_seconds: float = 0.0,
                 heap: dict[str, Any] | None = None):
        self.pool = pool
        self.trimmer = HeapTrimmer(trim_seconds, idle=pool.idle)
        self.heap = dict(heap or {})
        self.address = Address(address)
        if self.address.kind == "tcp" and not secret:
            raise ValueError("A model server on TCP needs a shared secret (MODELGATE_MODEL_SERVER_SECRET).")
        self.secret = secret
        self.started = time.time()
        self._serving = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._server = self._bind()

    def _bind(self) -> socketserver.BaseServer:
        handler = _handler_for(self)
        if self.address.kind == "unix":
            path = self.address.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a socket left by a server that died
            old_umask = os.umask(0o177)  # created 0600: only the service user may talk to the models
            try:
                server = _UnixServer(str(path), handler)
            finally:
                os.umask(old_umask)
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            return server
        return _TCPServer((self.address.host, self.address.port), handler)

    @property
    def bound(self) -> str:
        """The address actually listened on (a TCP port 0 becomes the port the system chose)."""
        if self.address.kind == "tcp":
            host, port = self._server.server_address[:2]
            return f"tcp://{host}:{port}"
        return str(self.address)

    def serve_forever(self) -> None:
        logger.info("model server listening", extra={"address": self.bound, "pid": os.getpid()})
        self._serving = True
        self.trimmer.start()
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="model-server", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop accepting, end every open connection (their clients see the server gone at once)."""
        if self._serving:
            self._server.shutdown()  # waits for serve_forever to return: only when it ran
        self._server.server_close()
        self.trimmer.stop()
        with self._connections_lock:
            for sock in self._connections:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self.address.kind == "unix":
            self.address.path.unlink(missing_ok=True)

    # --- operations --------------------------------------------------------------------------
    def handle(self, request: dict[str, Any], sock: socket.socket) -> dict[str, Any] | None:
        op = request.get("op")
        try:
            return self._operation(op, request, sock)
        finally:
            if op in WORK_OPERATIONS:
                self.trimmer.note_work()  # its buffers are freed now: the heap may have pages to give back

    def _operation(self, op: Any, request: dict[str, Any], sock: socket.socket) -> dict[str, Any] | None:
        if op == "infer":
            return self._infer(request, sock)
        if op == "stream":
            self._stream(request, sock)
            return None  # the stream wrote its own frames
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "uptime": time.time() - self.started, "loaded": self.pool.loaded(),
                    "used_memory_mb": self.pool.used_memory_mb(), "memory_budget_mb": self.pool.memory_budget_mb,
                    "heap": {**self.heap, **self.trimmer.stats()}}
        if op == "stats":
            return {"ok": True, "stats": self.pool.stats(request.get("slug"))}
        if op == "load":
            return {"ok": True, "stats": self.pool.load(request["config"])}
        if op == "probe":
            return {"ok": True, "probe": self.pool.probe_input(request["config"])}
        if op == "unload":
            return {"ok": True, "unloaded": self.pool.unload(request["slug"])}
        if op == "preload":
            return {"ok": True, "outcome": [list(pair) for pair in self.pool.preload(request["configs"])]}
        raise InvalidInput(f"Unknown model server operation {op!r}.")

    def _infer(self, request: dict[str, Any], sock: socket.socket) -> dict[str, Any]:
        config, timeout = request["config"], request.get("timeout")
        futures = self.pool.submit_many(config, request["items"])
        deadline = None if timeout is None else time.monotonic() + timeout
        pending: set[Future] = set(futures)
        while pending:
            # All at once or a poll interval: a large batch must not cost a wake-up per item.
            _, pending = wait(pending, timeout=POLL_SECONDS, return_when=ALL_COMPLETED)
            if pending and _gone(sock):
                for future in pending:
                    future.cancel()  # the client left: nobody waits for these any more
                raise wire.ConnectionClosed("The client went away.")
            if pending and deadline is not None and time.monotonic() > deadline:
                for future in pending:
                    future.cancel()
                raise InferenceTimeout(f"{config.slug} did not answer within {timeout:.1f}s.")
        results = []
        for future in futures:
            error = future.exception()
            results.append(error if error is not None else future.result())
        timings = [getattr(future, "timing", None) for future in futures]
        known = [t for t in timings if t is not None]
        return {"ok": True, "results": results,
                "queue_ms": max((t.queue_ms for t in known), default=0.0),
                "compute_ms": sum(t.compute_ms for t in known)}

    def _stream(self, request: dict[str, Any], sock: socket.socket) -> None:
        stream = self.pool.stream(request["config"], request["item"])
        try:
            for piece in stream:
                wire.send(sock, {"piece": piece})
            wire.send(sock, {"ok": True, "done": stream.result})
        except OSError:
            logger.info("stream client went away", extra={"model": request["config"].slug})
        finally:
            stream.close()  # stops the model when the client left before the end


def _gone(sock: socket.socket) -> bool:
    """True when the peer closed its end (a readable socket with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _handler_for(server: ModelServer) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def setup(self) -> None:
            with server._connections_lock:
                server._connections.add(self.request)

        def finish(self) -> None:
            with server._connections_lock:
                server._connections.discard(self.request)

        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(None)
            trusted = server.secret is None
            while True:
                try:
                    request = wire.receive(sock)
                except (wire.ConnectionClosed, OSError):
                    return
                except wire.WireError as exc:
                    _reply(sock, {"ok": False, "error": exc})
                    return
                if not isinstance(request, dict):
                    _reply(sock, {"ok": False, "error": wire.WireError("A request is a map.")})
                    return
                if request.get("op") == "hello":
                    offered = str(request.get("secret") or "")
                    trusted = server.secret is None or hmac.compare_digest(offered.encode(), server.secret.encode())
                    _reply(sock, {"ok": True} if trusted else
                           {"ok": False, "error": ModelServerUnavailable("The model server refused a wrong secret.")})
                    if not trusted:
                        return
                    continue
                if not trusted:
                    _reply(sock, {"ok": False, "error": ModelServerUnavailable(
                        "The model server needs the shared secret (MODELGATE_MODEL_SERVER_SECRET) first.")})
                    return
                try:
                    response = server.handle(request, sock)
                except wire.ConnectionClosed:
                    return
                except InferenceError as exc:
                    response = {"ok": False, "error": exc}
                except Exception as exc:  # a bug or a crashed backend: the client gets an error, the server lives on
                    logger.exception("model server request failed", extra={"op": request.get("op")})
                    response = {"ok": False, "error": InferenceError(f"The model server failed: {exc}")}
                if response is not None and not _reply(sock, response):
                    return

    return Handler


def _reply(sock: socket.socket, response: dict[str, Any]) -> bool:
    try:
        wire.send(sock, response)
        return True
    except OSError:
        return False


# Every web thread of every worker may connect at once (a restart, a burst): room for them to wait.
BACKLOG = 256


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = BACKLOG


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG
