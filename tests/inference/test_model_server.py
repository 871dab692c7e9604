"""The model server and its client: a RemotePool answers as the pool in process does (real lid.176 and a
tiny chat model), batches callers together, cancels what a departed client waited for, keeps its
secret on TCP, and a server that is gone — shut down, restarted or killed — is an error at once."""
from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest

from inference import wire
from inference.base import Backend, ModelConfig
from inference.client import ModelServerUnavailable, RemotePool
from inference.errors import InferenceError, InferenceTimeout, InvalidInput, ModelLoadError
from inference.generation import TransformersGenerator
from inference.payloads import ChatMessage, Generation, GenerationInput, GenerationStream, LanguageGuess, LanguageIdInput
from inference.pool import ModelPool, Timing
from inference.server import Address, ModelServer
from tests.conftest import ROOT
from tests.inference.tiny_generation import REPLIES, build_tiny_chat_model

GATE_SECONDS = 10.0  # a gated batch never waits longer, so a failing test cannot hang the suite
FRANCE = "What is the capital of France?"
TEXTS = [
    "The weather is lovely today and we are going to the park.",
    "Le temps est magnifique aujourd'hui et nous allons au parc.",
    "Das Wetter ist heute herrlich und wir gehen in den Park.",
    LanguageIdInput("Hali ya hewa ni nzuri leo na tunaenda kwenye bustani.", top_k=3),
]


class Gated(Backend):
    """A fake model (what cannot run here: a slow or stuck one). Doubles numbers; a string fails its own
    item, "explode" its whole batch. With the option `gated`, each batch waits until the test opens the gate."""

    name = "gated"
    task = "test"
    option_types: ClassVar[dict[str, Any]] = {}

    def load(self) -> None:
        self.gate = threading.Event()
        if not self.option("gated", False):
            self.gate.set()
        self.started = threading.Event()
        self.ran: list[Any] = []

    def validate(self, item: Any) -> Any:
        if item is None:
            raise InvalidInput("no input")
        return item

    def infer(self, batch: list[Any]) -> list[Any]:
        self.started.set()
        self.gate.wait(GATE_SECONDS)
        time.sleep(self.option("compute_seconds", 0.0))
        self.ran.extend(batch)
        if "explode" in batch:
            raise RuntimeError("the whole batch failed")
        return [InvalidInput(f"cannot double {x!r}") if isinstance(x, str) else x * 2 for x in batch]

    def memory_estimate_mb(self) -> float:
        return 1.0


def gated(slug: str = "doubler", *, max_batch_size: int = 8, max_wait_ms: float = 5, **options: Any) -> ModelConfig:
    return ModelConfig(slug=slug, task="test", backend="gated", path=Path("."), options=options,
                       max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def fake_pool() -> Iterator[ModelPool]:
    backends: list[Gated] = []

    def create(config: ModelConfig) -> Gated:
        backends.append(Gated(config))
        return backends[-1]

    pool = ModelPool(memory_budget_mb=100, backend_factory=create)
    yield pool
    for backend in backends:  # a batch still at its gate would hold up the pool's shutdown
        if backend.loaded:
            backend.gate.set()
    pool.shutdown()


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[..., ModelServer]]:
    """Starts model servers in threads of this process (a unix socket in tmp_path by default); all stop after the test."""
    servers: list[ModelServer] = []

    def start(pool: ModelPool, *, address: str | None = None, secret: str | None = None) -> ModelServer:
        server = ModelServer(pool, address=address or f"unix://{tmp_path / 'models.sock'}", secret=secret)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture(scope="module")
def lid_server(tmp_path_factory, lid_config) -> Iterator[ModelServer]:
    pool = ModelPool(memory_budget_mb=1024)
    server = ModelServer(pool, address=f"unix://{tmp_path_factory.mktemp('lid') / 'models.sock'}")
    server.start()
    yield server
    server.shutdown()
    pool.shutdown()


# --- answers as in process --------------------------------------------------------------------
def test_remote_language_id_gives_the_same_values_and_types_as_the_pool_in_process(lid_server, lid_config):
    in_process = lid_server.pool.infer_many(lid_config, TEXTS)

    remote = RemotePool(lid_server.bound).infer_many(lid_config, TEXTS)

    assert remote == in_process
    assert [guesses[0].language for guesses in remote] == ["en", "fr", "de", "sw"]
    assert [len(guesses) for guesses in remote] == [1, 1, 1, 3]
    assert all(type(guesses) is list for guesses in remote)
    assert all(type(g) is LanguageGuess and type(g.probability) is float for guesses in remote for g in guesses)


def test_an_empty_text_fails_remotely_with_the_error_it_gets_in_process(lid_server, lid_config):
    remote = RemotePool(lid_server.bound)
    with pytest.raises(InvalidInput) as in_process:
        lid_server.pool.infer(lid_config, "")

    with pytest.raises(InvalidInput) as over_the_socket:
        remote.infer(lid_config, "")
    with pytest.raises(InvalidInput, match="empty"):
        remote.infer_many(lid_config, ["Hello everyone", "   "])

    assert type(over_the_socket.value) is type(in_process.value)
    assert (over_the_socket.value.code, str(over_the_socket.value)) == ("invalid_input", str(in_process.value))
    assert remote.infer(lid_config, "Hello everyone, how are you?")[0].language == "en"  # the connection lives on


def test_an_item_that_fails_in_its_batch_fails_its_call_as_in_process(fake_pool, serve):
    remote = RemotePool(serve(fake_pool).bound)
    config = gated(max_wait_ms=50)
    with pytest.raises(InvalidInput) as in_process:
        fake_pool.infer_many(config, [1, "two", 3])

    with pytest.raises(InvalidInput) as over_the_socket:
        remote.infer_many(config, [1, "two", 3])
    with pytest.raises(InferenceError, match="the whole batch failed"):
        remote.infer_many(config, [1, "explode"])

    assert str(over_the_socket.value) == str(in_process.value) == "cannot double 'two'"
    assert remote.infer_many(config, [1, 2, 3]) == [2, 4, 6]


def test_infer_timed_returns_the_results_and_their_timing(lid_server, lid_config):
    results, timing = RemotePool(lid_server.bound).infer_timed(lid_config, TEXTS[:3])

    assert [guesses[0].language for guesses in results] == ["en", "fr", "de"]
    assert type(timing) is Timing
    assert timing.queue_ms >= 0 and timing.compute_ms > 0


def test_management_calls_work_remotely(serve, lid_config, tmp_path):
    pool = ModelPool(memory_budget_mb=1024)
    try:
        remote = RemotePool(serve(pool).bound)
        missing = ModelConfig(slug="missing-lid", task="language_id", backend="fasttext", path=tmp_path / "nope.ftz")

        ping = remote.ping()
        assert (ping["ok"], ping["pid"], ping["loaded"], ping["memory_budget_mb"]) == (True, os.getpid(), [], 1024)
        assert ping["uptime"] >= 0

        stats = remote.load(lid_config)
        assert (stats["loaded"], stats["loads"]) == (True, 1)
        assert remote.loaded() == ["lid-176"] and remote.is_loaded("lid-176") and not remote.is_loaded("other")
        assert remote.used_memory_mb() == pool.used_memory_mb() > 0

        probe = remote.probe_input(lid_config)
        assert type(probe) is LanguageIdInput and probe == pool.probe_input(lid_config)

        remote.infer(lid_config, probe)
        assert remote.stats("lid-176") == pool.stats("lid-176")
        assert remote.stats() == pool.stats()
        assert remote.stats("never-loaded") == {"loaded": False}

        assert remote.unload("lid-176") is True
        assert remote.loaded() == [] and remote.unload("lid-176") is False

        outcome = remote.preload([lid_config, missing])
        assert all(type(pair) is tuple for pair in outcome)
        assert outcome[0] == ("lid-176", None)
        assert outcome[1][0] == "missing-lid" and "not found" in outcome[1][1]
        assert remote.loaded() == ["lid-176"]
        with pytest.raises(ModelLoadError, match="not found"):
            remote.load(missing)
    finally:
        pool.shutdown()


def test_a_bad_request_gets_an_error_and_the_server_serves_on(fake_pool, serve):
    server = serve(fake_pool)
    with server.address.connect(timeout=5) as sock:
        wire.send(sock, {"op": "dance"})
        assert isinstance(wire.receive(sock)["error"], InvalidInput)
        wire.send(sock, {"op": "unload"})  # no slug: a server-side failure, answered
        answer = wire.receive(sock)
        assert answer["ok"] is False and isinstance(answer["error"], InferenceError)
        wire.send(sock, {"op": "ping"})
        assert wire.receive(sock)["ok"] is True
    with server.address.connect(timeout=5) as sock:
        frame = msgpack.packb({"__t": "Pickle"})  # a type nobody knows
        sock.sendall(struct.pack("!I", len(frame)) + frame)
        answer = wire.receive(sock)
        assert answer["ok"] is False and answer["error"].code == "model_server_protocol"
        with pytest.raises(wire.ConnectionClosed):
            wire.receive(sock)  # an unreadable stream is closed
    assert RemotePool(server.bound).infer(gated(), 4) == 8


# --- batching, cancellation and deadlines -------------------------------------------------------
def test_concurrent_callers_from_16_threads_batch_together_on_the_server(fake_pool, serve):
    remote = RemotePool(serve(fake_pool).bound)
    config = gated(compute_seconds=0.05, max_batch_size=16, max_wait_ms=30)
    start = threading.Barrier(16)
    one_at_a_time = threading.Lock()

    def call(n: int) -> list[int]:
        with one_at_a_time:  # connect first, one by one: a burst of connections is another test's subject
            remote.ping()
        start.wait(timeout=10)
        return [remote.infer(config, 2 * n + k, timeout=10) for k in range(2)]

    with ThreadPoolExecutor(16) as executor:
        answers = [x for pair in executor.map(call, range(16)) for x in pair]

    assert answers == [2 * n for n in range(32)]
    stats = fake_pool.stats(config.slug)
    assert stats["items"] == 32
    assert stats["batches"] < 32 and stats["max_batch_size"] > 1
    assert stats["max_batch_size"] <= 16


def test_a_burst_of_clients_connecting_while_the_server_is_busy_waits_to_be_accepted(fake_pool, tmp_path):
    """Web workers connect together (after a restart, on a burst of traffic) while the accept loop may be
    held up for a moment (a batch or a large frame holding the GIL): they must queue for their connect
    timeout, not fail at once."""
    server = ModelServer(fake_pool, address=f"unix://{tmp_path / 'models.sock'}")  # listening, not yet accepting
    accepting = threading.Timer(0.3, server.start)
    accepting.start()
    try:
        with ThreadPoolExecutor(16) as executor:
            pings = list(executor.map(lambda _: _outcome(RemotePool(server.bound).ping), range(16)))
    finally:
        accepting.join()
        server.shutdown()

    assert [ping if isinstance(ping, Exception) else ping["ok"] for ping in pings] == [True] * 16


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except InferenceError as exc:
        return exc


def test_a_client_that_goes_away_cancels_its_queued_items(fake_pool, serve):
    server = serve(fake_pool)
    config = gated(gated=True, max_batch_size=1)
    sock = server.address.connect(timeout=5)
    wire.send(sock, {"op": "infer", "config": config, "items": [1, 2, 3, 4], "timeout": None})
    backend = fake_pool.get(config).backend
    assert backend.started.wait(5)  # item 1 runs (at the gate); 2, 3 and 4 wait in the queue

    sock.close()
    # The server looks every POLL_SECONDS whether its client is still there, then ends the connection.
    wait_until(lambda: not server._connections, "the server to notice its client left")
    backend.gate.set()

    assert RemotePool(server.bound).infer(config, 100, timeout=5) == 200
    assert backend.ran == [1, 100]  # the departed client's queued items never ran


def test_a_server_deadline_is_an_inference_timeout_quickly_never_a_hang(fake_pool, serve):
    server = serve(fake_pool)
    remote = RemotePool(server.bound)
    config = gated(gated=True, max_batch_size=1)

    started = time.monotonic()
    with pytest.raises(InferenceTimeout, match="did not answer within 0.3s"):
        remote.infer_many(config, [1, 2, 3], timeout=0.3)
    elapsed = time.monotonic() - started

    assert 0.3 <= elapsed < 2.0
    backend = fake_pool.get(config).backend
    backend.gate.set()
    assert remote.infer(config, 100, timeout=5) == 200  # the same connection, still usable
    assert backend.ran == [1, 100]  # items 2 and 3 were dropped with the deadline


# --- streaming generation -------------------------------------------------------------------
SECONDS_PER_TOKEN = 0.05


class ObservedGenerator(TransformersGenerator):
    """The real tiny chat model; its streamed tokens are slowed and counted, so that a stream the client
    left can be seen to stop on the server (the model alone answers before the client can close)."""

    def load(self) -> None:
        super().load()
        self.streamed = 0
        self.stream_ended = threading.Event()

    def _stream_ids(self, prompt, item, logprobs):
        self.streamed = 0
        self.stream_ended.clear()
        tokens = super()._stream_ids(prompt, item, logprobs)
        try:
            for token in tokens:
                self.streamed += 1
                time.sleep(SECONDS_PER_TOKEN)
                yield token
        finally:
            tokens.close()
            self.stream_ended.set()


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Iterator[tuple[ModelServer, ModelConfig]]:
    model_dir = build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat") / "transformers")
    config = ModelConfig(slug="tiny-chat", task="generation", backend="transformers-generator", path=model_dir,
                         options={"max_input_tokens": 64, "max_tokens_limit": 40}, max_batch_size=8, max_wait_ms=5)
    pool = ModelPool(memory_budget_mb=2048, backend_factory=lambda c: ObservedGenerator(c))
    server = ModelServer(pool, address=f"unix://{tmp_path_factory.mktemp('chat') / 'models.sock'}")
    server.start()
    yield server, config
    server.shutdown()
    pool.shutdown()


def ask(question: str, max_tokens: int = 32) -> GenerationInput:
    return GenerationInput(messages=(ChatMessage("user", question),), max_tokens=max_tokens)


def test_a_remote_stream_joins_into_the_answer_infer_gives(chat):
    server, config = chat
    remote = RemotePool(server.bound)
    in_process = server.pool.infer(config, ask(FRANCE))

    answer = remote.infer(config, ask(FRANCE))
    stream = remote.stream(config, ask(FRANCE))
    assert isinstance(stream, GenerationStream) and stream.result is None
    pieces = list(stream)

    assert answer == in_process and type(answer) is Generation
    assert answer.text == REPLIES[FRANCE] and answer.finish_reason == "stop"
    assert len(pieces) > 1 and all(type(piece) is str for piece in pieces)
    assert "".join(pieces) == answer.text
    assert stream.result == answer


def test_closing_a_remote_stream_early_stops_the_model_on_the_server(chat):
    server, config = chat
    remote = RemotePool(server.bound)
    backend = server.pool.get(config).backend
    full = server.pool.infer(config, ask(FRANCE))

    stream = remote.stream(config, ask(FRANCE))
    first = next(stream)
    stream.close()

    assert backend.stream_ended.wait(5)
    assert backend.streamed < full.tokens_out  # it stopped well before the answer's end
    assert REPLIES[FRANCE].startswith(first) and stream.result is None
    assert remote.infer(config, ask(FRANCE)).text == REPLIES[FRANCE]  # and the model serves on


def test_a_stream_with_bad_input_raises_before_any_piece(chat):
    server, config = chat
    with pytest.raises(InvalidInput, match="messages must not be empty"):
        RemotePool(server.bound).stream(config, GenerationInput(messages=()))


# --- the socket and its secret --------------------------------------------------------------
def test_the_unix_socket_is_for_its_owner_only_replaces_a_stale_one_and_goes_at_shutdown(fake_pool, serve, tmp_path):
    path = tmp_path / "models.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # a socket file left by a server that died
        dead.bind(str(path))
    old_umask = os.umask(0o000)  # even under a permissive umask
    try:
        server = serve(fake_pool, address=f"unix://{path}")
    finally:
        os.umask(old_umask)

    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert RemotePool(server.bound).infer(gated(), 1) == 2
    server.shutdown()
    assert not path.exists()


def test_a_tcp_server_without_a_secret_is_refused(fake_pool):
    for secret in (None, ""):
        with pytest.raises(ValueError, match="shared secret"):
            ModelServer(fake_pool, address=f"tcp://127.0.0.1:{free_tcp_port()}", secret=secret)


def test_on_tcp_only_a_client_with_the_right_secret_is_served(fake_pool, serve):
    server = serve(fake_pool, address=f"tcp://127.0.0.1:{free_tcp_port()}", secret="s3cret-for-tests")

    # Both refusals are the server being unavailable to this client (never the request's fault: no 400).
    with pytest.raises(ModelServerUnavailable, match="needs the shared secret"):
        RemotePool(server.bound).infer(gated(), 1)
    with pytest.raises(ModelServerUnavailable, match="refused the shared secret"):
        RemotePool(server.bound, secret="wrong").infer(gated(), 1)
    assert fake_pool.loaded() == []  # neither reached a model

    assert RemotePool(server.bound, secret="s3cret-for-tests").infer(gated(), 21) == 42


def test_a_tcp_server_on_port_zero_listens_on_a_port_the_system_chose(fake_pool, serve):
    server = serve(fake_pool, address="tcp://127.0.0.1:0", secret="s3cret-for-tests")

    host, port = server.bound.removeprefix("tcp://").rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert RemotePool(server.bound, secret="s3cret-for-tests").infer(gated(), 21) == 42


def test_addresses_are_unix_paths_or_tcp_hosts_with_ports():
    assert Address("unix:///run/modelgate/models.sock").path == Path("/run/modelgate/models.sock")
    assert (Address("tcp://10.0.0.7:7070").host, Address("tcp://10.0.0.7:7070").port) == ("10.0.0.7", 7070)
    for bad in ("models.sock", "unix://", "tcp://10.0.0.7", "http://10.0.0.7:80"):
        with pytest.raises(ValueError, match="unix:///path or tcp://host:port"):
            Address(bad)


# --- a server that is gone ----------------------------------------------------------------------
def test_after_shutdown_every_client_gets_model_server_unavailable_at_once(fake_pool, serve):
    server = serve(fake_pool)
    remote = RemotePool(server.bound)
    assert remote.infer(gated(), 1) == 2  # a kept connection
    stuck = gated("stuck", gated=True)
    executor = ThreadPoolExecutor(1)
    try:
        waiting = executor.submit(RemotePool(server.bound).infer, stuck, 5, timeout=30)
        wait_until(lambda: fake_pool.is_loaded("stuck") and fake_pool.get(stuck).backend.started.is_set(),
                   "the stuck request to reach its model")

        started = time.monotonic()
        server.shutdown()
        with pytest.raises(ModelServerUnavailable):
            waiting.result(timeout=5)  # was waiting on its answer: the connection ended
        with pytest.raises(ModelServerUnavailable):
            remote.infer(gated(), 1)  # its kept connection is dead and nothing listens any more
        with pytest.raises(ModelServerUnavailable):
            RemotePool(server.bound).ping()
        assert time.monotonic() - started < 3.0
    finally:
        executor.shutdown(wait=False)


def test_a_restarted_server_at_the_same_address_is_used_again_by_the_same_client(fake_pool, serve):
    first = serve(fake_pool)
    remote = RemotePool(first.bound)
    assert remote.infer(gated(), 1) == 2

    first.shutdown()
    with pytest.raises(ModelServerUnavailable):
        remote.infer(gated(), 2)
    second = serve(fake_pool, address=first.bound)
    assert remote.infer(gated(), 3) == 6

    # A kept connection to a server that restarted meanwhile: retried once on a fresh connection.
    second.shutdown()
    serve(fake_pool, address=first.bound)
    assert remote.infer(gated(), 4) == 8
    assert remote.ping()["uptime"] < time.time() - first.started


STARTUP_SECONDS = 90  # Django and the inference imports, on two busy cores


def test_the_modelserver_command_serves_lid_and_its_sudden_death_fails_a_waiting_client_at_once(tmp_path, lid_config):
    path = tmp_path / "models.sock"
    address = f"unix://{path}"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "modelserver", "--address", address, "--memory-mb", "512"],
        cwd=ROOT, env={**os.environ, "MODELGATE_LOG_LEVEL": "WARNING"}, stdout=subprocess.DEVNULL,
    )
    executor = ThreadPoolExecutor(1)
    try:
        wait_until(lambda: path.exists() or process.poll() is not None, "the model server's socket", STARTUP_SECONDS)
        assert process.poll() is None, "manage.py modelserver exited"
        remote, monitor = RemotePool(address), RemotePool(address)
        assert remote.ping()["pid"] == process.pid
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

        answers = remote.infer_many(lid_config, TEXTS)
        assert [guesses[0].language for guesses in answers] == ["en", "fr", "de", "sw"]
        assert all(type(g) is LanguageGuess for guesses in answers for g in guesses)

        # Thousands of long texts keep the server busy for a second or more: it dies in the middle.
        many = [f"Sentence {n} tells how the weather is in the park today. " * 35 for n in range(10_000)]
        before = monitor.stats("lid-176")["items"]
        waiting = executor.submit(remote.infer_many, lid_config, many, timeout=60)
        wait_until(lambda: waiting.done() or monitor.stats("lid-176")["items"] > before, "the batch to start", 30)
        assert not waiting.done(), "the batch ended before the server could be killed"

        process.kill()
        killed = time.monotonic()
        with pytest.raises(ModelServerUnavailable):
            waiting.result(timeout=10)
        assert time.monotonic() - killed < 5.0
        with pytest.raises(ModelServerUnavailable):
            monitor.ping()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        executor.shutdown(wait=False)
