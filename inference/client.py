"""ModelPools in other processes: the same calls as inference.pool.ModelPool, answered by a model server
(inference.server) over its socket (RemotePool), or by the first healthy one of several that may serve
the model (Fleet). One connection per calling thread; a server that is gone or restarting is an error
at once (ModelServerUnavailable), never a hung request."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, TypeVar

from inference import wire
from inference.base import ModelConfig
from inference.breaker import Call, CircuitBreaker, CircuitOpen
from inference.errors import InferenceError, ModelServerUnavailable
from inference.payloads import Generation, GenerationStream
from inference.pool import Timing
from inference.server import Address

T = TypeVar("T")
CONNECT_SECONDS = 2.0
IDLE_SECONDS = 300.0  # an operation without its own deadline (a model's first load) waits at most this long


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
        # The connect timeout is not the stream's: a model's first load comes before its first piece.
        sock.settimeout(IDLE_SECONDS)
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

    def stats(self, slug: str | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        return self._call({"op": "stats", "slug": slug}, timeout=timeout)["stats"]

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


class Fleet:
    """Several model servers behind the ModelPool interface. A request goes to the first healthy server
    that may serve its model (`placement(slug)`: the addresses listed for it, empty for all of them);
    a server that cannot be reached is skipped for a short while (a circuit breaker per server, which
    lets one probe through after the cooldown), and when none is left the request fails at once with
    ModelServerUnavailable — a 503, never a hung request."""

    def __init__(self, addresses: list[str], *, secret: str | None = None,
                 placement: Callable[[str], Sequence[str]] = lambda slug: (), cooldown: float = 2.0):
        if not addresses:
            raise ValueError("A fleet needs at least one model server.")
        self.servers = {address: RemotePool(address, secret=secret) for address in addresses}
        self.breakers = {address: CircuitBreaker(name=f"model server {address}", threshold=1, cooldown=cooldown)
                         for address in addresses}
        self.placement = placement

    def __repr__(self) -> str:
        return f"Fleet({', '.join(self.servers)})"

    def candidates(self, slug: str) -> list[str]:
        allowed = set(self.placement(slug) or ())
        return [address for address in self.servers if not allowed or address in allowed]

    def _on_one(self, slug: str, call: Callable[[RemotePool], T]) -> T:
        tried: list[str] = []
        for address in self.candidates(slug):
            try:
                attempt = Call(self.breakers[address])
            except CircuitOpen as exc:
                tried.append(str(exc))
                continue
            try:
                result = call(self.servers[address])
            except ModelServerUnavailable as exc:
                attempt.failed(retryable=True)
                tried.append(str(exc))
                continue
            except BaseException:
                attempt.succeeded()  # the server answered (with an error of the request's): it is up
                raise
            attempt.succeeded()
            return result
        if not tried:
            raise ModelServerUnavailable(f"No model server is placed to serve {slug}.")
        raise ModelServerUnavailable(f"No model server can serve {slug} now: {'; '.join(tried)}")

    # --- the ModelPool interface -----------------------------------------------------------
    def infer(self, config: ModelConfig, item: Any, *, timeout: float | None = None) -> Any:
        return self._on_one(config.slug, lambda server: server.infer(config, item, timeout=timeout))

    def infer_many(self, config: ModelConfig, items: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        items = list(items)
        return self._on_one(config.slug, lambda server: server.infer_many(config, items, timeout=timeout))

    def infer_timed(self, config: ModelConfig, items: Iterable[Any], *, timeout: float | None = None) -> tuple[list[Any], Timing]:
        items = list(items)
        return self._on_one(config.slug, lambda server: server.infer_timed(config, items, timeout=timeout))

    def stream(self, config: ModelConfig, item: Any) -> GenerationStream:
        return self._on_one(config.slug, lambda server: server.stream(config, item))

    def load(self, config: ModelConfig) -> dict[str, Any]:
        return self._on_one(config.slug, lambda server: server.load(config))

    def probe_input(self, config: ModelConfig) -> Any:
        return self._on_one(config.slug, lambda server: server.probe_input(config))

    def preload(self, configs: Iterable[ModelConfig]) -> list[tuple[str, str | None]]:
        outcome = []
        for config in configs:
            try:
                self.load(config)
                outcome.append((config.slug, None))
            except InferenceError as exc:
                outcome.append((config.slug, str(exc)))
        return outcome

    # --- across the fleet ------------------------------------------------------------------
    def servers_state(self) -> dict[str, dict[str, Any]]:
        """Each server's ping (pid, loaded models, memory), or the error that reaching it gave."""
        state: dict[str, dict[str, Any]] = {}
        for address, server in self.servers.items():
            try:
                state[address] = server.ping()
            except ModelServerUnavailable as exc:
                state[address] = {"ok": False, "error": str(exc)}
        return state

    def ping(self) -> dict[str, Any]:
        return {"ok": True, "servers": self.servers_state()}

    def loaded(self) -> list[str]:
        return sorted({slug for state in self.servers_state().values() for slug in state.get("loaded", [])})

    def is_loaded(self, slug: str) -> bool:
        return slug in self.loaded()

    def used_memory_mb(self) -> float:
        return sum(state.get("used_memory_mb", 0.0) for state in self.servers_state().values())

    def unload(self, slug: str) -> bool:
        unloaded = False
        for server in self.servers.values():
            try:
                unloaded = server.unload(slug) or unloaded
            except ModelServerUnavailable:
                pass  # a server that is gone holds nothing
        return unloaded

    def stats(self, slug: str | None = None) -> dict[str, Any]:
        """One model's statistics from the server that has it loaded (else the first that answers), or
        every model's, by slug, from every server that answers (a model on two servers: the first's)."""
        merged: dict[str, Any] = {}
        for server in self.servers.values():
            try:
                found = server.stats(slug)
            except ModelServerUnavailable:
                continue
            if slug is not None:
                if found.get("loaded") or not merged:
                    merged = found
                if found.get("loaded"):
                    break
            else:
                for name, value in found.items():
                    if name not in merged or (value.get("loaded") and not merged[name].get("loaded")):
                        merged[name] = value
        return merged if merged or slug is None else {"loaded": False}
