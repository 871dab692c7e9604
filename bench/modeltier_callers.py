"""One simulated web worker for bench_modeltier.py: threads in a process of their own, each calling a model
server through a RemotePool with one text at a time, as a gunicorn worker's request threads do.

Usage: modeltier_callers.py <address> <job file> <threads> <first caller index>. The job file holds the
model's config, the texts and the requests per thread (inference.wire's msgpack). Prints READY once every
thread has its connection and one answer; then each `GO` line on standard input runs one round and prints
its start and end (time.monotonic, one clock for every process) and the latency of each request as JSON.
Standard input closing ends the process.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference import wire  # noqa: E402
from inference.client import RemotePool  # noqa: E402


def main() -> None:
    address, job_file, threads, first = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    job = wire.unpackb(job_file.read_bytes())
    config, texts, per_thread = job["config"], job["texts"], job["per_thread"]
    pool = RemotePool(address)
    start, end = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stopping = threading.Event()

    def caller(index: int) -> None:
        pool.infer(config, "warm up")  # opens this thread's connection, kept for every round
        start.wait()  # the warm-up's barrier: READY is printed once every thread passed it
        caller_index = first + index
        while True:
            start.wait()
            if stopping.is_set():
                return
            mine = latencies[index] = []
            for j in range(per_thread):
                text = texts[(caller_index * per_thread + j) % len(texts)]
                t0 = time.perf_counter()
                pool.infer(config, text)
                mine.append((time.perf_counter() - t0) * 1000)
            end.wait()

    workers = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "GO":
            continue
        start.wait()
        began = time.monotonic()
        end.wait()
        finished = time.monotonic()
        print(json.dumps({"start": began, "end": finished, "latencies_ms": [x for mine in latencies for x in mine]}), flush=True)
    stopping.set()
    start.wait()


if __name__ == "__main__":
    main()
