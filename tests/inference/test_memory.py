"""The model server's heap: a fixed mmap threshold keeps large buffers mapped after glibc would have moved
it, the arena cap holds (each in a process of its own), an operator's settings win, a trim hands freed
pages back to the system, the trimmer trims after work only (at once when idle, after its interval
under load), a model server counts its trims, and off glibc all of it does nothing and says so."""
from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from inference import memory
from inference.client import RemotePool
from inference.memory import HeapTrimmer, fix_mmap_threshold, limit_arenas, trim_heap
from inference.pool import ModelPool
from inference.server import ModelServer
from tests.conftest import ROOT
from tests.inference.test_model_server import Gated, gated, wait_until

on_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

ARENAS_SCRIPT = textwrap.dedent("""
    import ctypes, sys, tempfile, threading
    sys.path.insert(0, {root!r})
    from inference.memory import limit_arenas
    print(limit_arenas(int(sys.argv[1])))
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    barrier = threading.Barrier(16)
    def work():
        barrier.wait()  # all at once: each thread finds the arenas locked and asks for its own
        for _ in range(3000):
            libc.free(libc.malloc(4096))
    threads = [threading.Thread(target=work) for _ in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    libc.fopen.restype = ctypes.c_void_p
    path = tempfile.mktemp()
    handle = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
    libc.malloc_info(0, handle)
    libc.fclose(handle)
    print(open(path).read().count("<heap nr="))
""")


MMAP_SCRIPT = textwrap.dedent("""
    import ctypes, sys
    sys.path.insert(0, {root!r})
    from inference.memory import fix_mmap_threshold
    print(fix_mmap_threshold(int(sys.argv[1])))
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Mallinfo2
    libc.free(libc.malloc(2 << 20))  # a 2 MiB buffer, mapped, freed: glibc's own threshold moves up to it
    mapped = libc.mallinfo2().hblks
    buffer = libc.malloc(2 << 20)
    print(libc.mallinfo2().hblks - mapped)  # 1 when the second buffer was mapped too, 0 when it came from the heap
""")


def in_a_process_of_its_own(script: str, argument: int, **env: str) -> list[str]:
    """What `script` printed, run with `env` over ours, less any glibc malloc setting of ours."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", script.format(root=str(ROOT)), str(argument)], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()


def arenas_after_contention(cap: int, **env: str) -> tuple[str, int]:
    """(what limit_arenas answered, arenas the process had) after 16 threads allocated at once."""
    answer, heaps = in_a_process_of_its_own(ARENAS_SCRIPT, cap, **env)
    return answer, int(heaps)


@on_glibc
def test_a_fixed_mmap_threshold_keeps_large_buffers_mapped_and_an_operators_wins():
    assert in_a_process_of_its_own(MMAP_SCRIPT, 0) == ["None", "0"]  # glibc moved its threshold: heap
    assert in_a_process_of_its_own(MMAP_SCRIPT, 128) == ["128", "1"]
    assert in_a_process_of_its_own(MMAP_SCRIPT, 128, MALLOC_MMAP_THRESHOLD_=str(4 << 20)) == ["4096", "0"]
    assert in_a_process_of_its_own(MMAP_SCRIPT, 128, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=262144") == ["256", "1"]


@on_glibc
def test_the_arena_cap_holds_when_threads_contend_and_an_operators_setting_wins():
    uncapped_answer, uncapped = arenas_after_contention(0)
    capped_answer, capped = arenas_after_contention(2)
    operator_answer, operator = arenas_after_contention(2, MALLOC_ARENA_MAX="3")

    assert (uncapped_answer, capped_answer, operator_answer) == ("None", "2", "3")
    assert capped == 2
    assert operator == 3  # glibc read the operator's at start; limit_arenas left it alone
    assert uncapped > 3  # glibc's own limit is 8 per core: contention made more than the cap allows


@on_glibc
def test_a_trim_gives_freed_heap_pages_back_to_the_system():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    process = psutil.Process()
    chunk, count = 4096, 20_000  # 80 MB of small chunks: under the mmap threshold, so on the heap
    pointers = [libc.malloc(chunk) for _ in range(count)]
    for pointer in pointers:
        ctypes.memset(pointer, 1, chunk)  # touched: resident
    pin = libc.malloc(chunk)  # above them all: free() cannot give them back by shrinking the heap's top
    for pointer in pointers:
        libc.free(pointer)
    freed = process.memory_info().rss
    try:
        assert trim_heap() is True
        trimmed = process.memory_info().rss
    finally:
        libc.free(pin)

    assert freed - trimmed > count * chunk / 2, f"RSS {freed / 2**20:.0f} MB → {trimmed / 2**20:.0f} MB"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def counted() -> Iterator[tuple[HeapTrimmer, Clock, list[bool], list[int]]]:
    """A trimmer on a clock the test moves, with an idle flag the test sets and a count of its trims."""
    clock, idle, trims = Clock(), [True], []
    trimmer = HeapTrimmer(10.0, idle=lambda: idle[0], trim=lambda: trims.append(1) or True, clock=clock)
    yield trimmer, clock, idle, trims


def test_the_trimmer_trims_only_after_work(counted):
    trimmer, clock, _, trims = counted
    clock.now += 60
    assert trimmer.maybe_trim() is False  # nothing ran: nothing to give back

    trimmer.note_work()
    assert trimmer.maybe_trim() is True
    assert trimmer.maybe_trim() is False  # once per piece of work
    assert len(trims) == 1 and trimmer.stats()["trims"] == 1


def test_an_idle_server_trims_soon_after_work_and_a_busy_one_after_the_interval(counted):
    trimmer, clock, idle, trims = counted
    trimmer.note_work()
    assert trimmer.maybe_trim() is False  # the last trim (the start) was just now
    clock.now += 2.5  # a quarter of the interval
    assert trimmer.maybe_trim() is True

    idle[0] = False
    trimmer.note_work()
    clock.now += 9.0
    assert trimmer.maybe_trim() is False  # busy: waits for the whole interval
    clock.now += 1.0
    assert trimmer.maybe_trim() is True
    assert len(trims) == 2


def test_a_trim_interval_of_zero_turns_the_trimmer_off():
    trimmer = HeapTrimmer(0.0, trim=lambda: pytest.fail("trimmed while off"))
    trimmer.note_work()
    trimmer.start()
    assert trimmer._thread is None
    assert trimmer.maybe_trim() is False
    assert trimmer.stats()["trim_seconds"] == 0


def test_off_glibc_nothing_is_trimmed_or_capped(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda *args, **kwargs: ("musl", "1.2"))
    for variable in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(variable, raising=False)
    memory._glibc.cache_clear()
    try:
        assert memory._glibc() is None
        assert trim_heap() is False
        assert limit_arenas(2) is None
        assert fix_mmap_threshold(128) is None
        trimmer = HeapTrimmer(10.0)
        trimmer.note_work()
        trimmer.start()
        assert trimmer.enabled is False and trimmer._thread is None
        assert trimmer.maybe_trim() is False
    finally:
        memory._glibc.cache_clear()  # the next caller finds the real C library again


@on_glibc
def test_a_model_server_trims_after_inference_and_reports_it(tmp_path: Path):
    pool = ModelPool(memory_budget_mb=100, backend_factory=Gated)
    server = ModelServer(pool, address=f"unix://{tmp_path / 'models.sock'}", trim_seconds=0.4,
                         heap={"arena_max": 2, "mmap_threshold_kb": 128})
    server.start()
    try:
        remote = RemotePool(server.bound)
        before = remote.ping()["heap"]
        assert before == {"arena_max": 2, "mmap_threshold_kb": 128, "trim_seconds": 0.4, "trims": 0, "trim_ms_mean": None,
                          "trim_ms_max": 0.0}

        assert remote.infer_many(gated(), [1, 2, 3]) == [2, 4, 6]
        wait_until(lambda: remote.ping()["heap"]["trims"] >= 1, "a trim after the inference")
        after = remote.ping()["heap"]
        assert after["trim_ms_mean"] is not None and after["trim_ms_max"] >= after["trim_ms_mean"] > 0
    finally:
        server.shutdown()
        pool.shutdown()
    assert server.trimmer._thread is None  # shutdown stopped it
