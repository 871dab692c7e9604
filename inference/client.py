"""A ModelPool in another process: the same calls as inference.pool.ModelPool, answered by a model
server (inference.server) over its socket. One connection per calling thread; a server that is gone
or restarting is an error at once (ModelServerUnavailable), never a hung request."""
from __future__ import annotations

import socket
import threading
from collections.abc import Generator, Iterable
from typing import Any

from inference import wire
from inference.base import ModelConfig
from inference.errors import InferenceError
from inference.payloads import Generation, GenerationStream
from inference.pool import Timing
from inference.server import Address

CONNECT_SECONDS = 2.0
IDLE_SECONDS = 300.0  # an operation without its own deadline (a model's first load) waits at most this long


class ModelServerUnavailable(InferenceError):
    code = "model_server_unavailable"


class RemotePool:
    """Thread-safe; each thread talks to the server on its own connection."""

    def __init__(self, address: str, *, secret: str | None = None, connect_timeout: float = CONNECT_SECONDS):
        self.address = Address(address)
        self.secret = secret
        self.connect_timeout = connect_timeout
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RemotePool({self.address})"

    # --- inference -------------------------------------------------------------------------
    def infer(self, config: ModelConfig, item: Any, *, timeout: float | None = None) -> Any:
        return self.infer_many(config, [item], timeout=timeout)[0]

    def infer_many(self, config: ModelConfig, items: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        return self.infer_timed(config, items, timeout=timeout)[0]

    def infer_timed(self, config: ModelConfig, items: Iterable[Any], *, timeout: float | None = None) -> tuple[list[Any], Timing]:
        answer = self._call({"op": "infer", "config": config, "items": list(items), "timeout": timeout}, timeout=timeout)
        results = answer["results"]
        for result in results:
            if isinstance(result, BaseException):
                raise result  # as in process: the first item's error is the call's
        return results, Timing(queue_ms=answer["queue_ms"], compute_ms=answer["compute_ms"])

    def stream(self, config: ModelConfig, item: Any) -> GenerationStream:
        """Pieces as the server's model writes them; closing the stream closes the connection, which
        stops the model there. Errors before the first piece (InvalidInput…) raise here."""
        sock = self._connect()
        try:
            wire.send(sock, {"op": "stream", "config": config, "item": item})
            first = wire.receive(sock)
        except BaseException as exc:
            sock.close()
            raise self._unavailable(exc) if isinstance(exc, (OSError, wire.ConnectionClosed)) else exc
        if first.get("ok") is False:
            sock.close()
            raise first["error"]
        return _RemoteStream(self._pieces(sock, first), sock)

    def _pieces(self, sock: socket.socket, first: dict[str, Any]) -> Generator[str, None, Generation]:
        frame = first
        try:
            while True:
                if "piece" in frame:
                    yield frame["piece"]
                elif "done" in frame:
                    return frame["done"]
                else:
                    raise frame.get("error") or wire.WireError("The model server ended the stream without an answer.")
                frame = wire.receive(sock)
        except (OSError, wire.ConnectionClosed) as exc:
            raise self._unavailable(exc) from None
        finally:
            sock.close()

    # --- management ------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self._call({"op": "ping"}, timeout=self.connect_timeout)

    def load(self, config: ModelConfig) -> dict[str, Any]:
        return self._call({"op": "load", "config": config})["stats"]

    def probe_input(self, config: ModelConfig) -> Any:
        return self._call({"op": "probe", "config": config})["probe"]

    def unload(self, slug: str) -> bool:
        return self._call({"op": "unload", "slug": slug})["unloaded"]

    def preload(self, configs: Iterable[ModelConfig]) -> list[tuple[str, str | None]]:
        return [tuple(pair) for pair in self._call({"op": "preload", "configs": list(configs)})["outcome"]]

    def stats(self, slug: str | None = None) -> dict[str, Any]:
        return self._call({"op": "stats", "slug": slug})["stats"]

    def loaded(self) -> list[str]:
        return self.ping()["loaded"]

    def is_loaded(self, slug: str) -> bool:
        return slug in self.loaded()

    def used_memory_mb(self) -> float:
        return self.ping()["used_memory_mb"]

    # --- the connection --------------------------------------------------------------------
    def _call(self, request: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        # The socket waits a little longer than the server's own deadline, so that the server's
        # timeout error (not a dropped connection) is what a slow model produces.
        wait = IDLE_SECONDS if timeout is None else timeout + 5.0
        for attempt in (1, 2):
            sock = self._connection()
            try:
                sock.settimeout(wait)
                wire.send(sock, request)
                answer = wire.receive(sock)
                break
            except (OSError, wire.ConnectionClosed) as exc:
                self._drop()
                # A kept connection may have died with a restarted server: one fresh try, before any
                # answer was read; a timeout is not retried (the work may still be running there).
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise self._unavailable(exc) from None
        if answer.get("ok") is False:
            raise answer["error"]
        return answer

    def _connection(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._local.sock = self._connect()
        return sock

    def _connect(self) -> socket.socket:
        try:
            sock = self.address.connect(self.connect_timeout)
        except OSError as exc:
            raise self._unavailable(exc) from None
        if self.secret is not None:
            try:
                wire.send(sock, {"op": "hello", "secret": self.secret})
                answer = wire.receive(sock)
            except (OSError, wire.ConnectionClosed) as exc:
                sock.close()
                raise self._unavailable(exc) from None
            if not answer.get("ok"):
                sock.close()
                raise ModelServerUnavailable(f"The model server at {self.address} refused the shared secret.")
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _unavailable(self, exc: BaseException) -> ModelServerUnavailable:
        return ModelServerUnavailable(f"The model server at {self.address} is unavailable: {exc}")


class _RemoteStream(GenerationStream):
    def __init__(self, pieces: Generator[str, None, Generation], sock: socket.socket):
        super().__init__(pieces)
        self._sock = sock

    def close(self) -> None:
        super().close()
        self._sock.close()
