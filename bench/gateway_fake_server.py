"""The fake OpenAI server of the tests, alone in its own process, for bench_gateway.py.

Prints `PORT <n>` once it listens, then serves until its standard input closes (or it is signalled).
In its own process it shares no GIL with the gateway under load nor with the benchmark itself.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.routing import fake_providers  # noqa: E402
from tests.routing.fake_providers import FakeProviderServer, RecordedRequest, _Behaviour  # noqa: E402

# http.server sends the headers and the body of an answer in two writes: with Nagle's algorithm on,
# the body waits for the client's delayed ACK of the headers, some 40 ms on Linux. An upstream that
# "answers at once" must not stall like that (the tests do not mind; a latency benchmark does).
fake_providers._Handler.disable_nagle_algorithm = True
# socketserver's listen backlog of 5 drops connections when 32 open at once: each costs a 1 s SYN retry.
fake_providers._QuietServer.request_queue_size = 128


class CountingFakeServer(FakeProviderServer):
    """Counts requests instead of keeping them: a load run sends far too many to hold in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _take(self, request: RecordedRequest) -> tuple[_Behaviour, str]:
        with self._lock:
            self.count += 1
            return self._behaviour, self._reply


def main() -> None:
    with CountingFakeServer() as server:
        port = server.url.rsplit(":", 1)[1]
        print(f"PORT {port}", flush=True)
        sys.stdin.read()  # the benchmark closes our stdin (or dies) when it is done
        print(f"SERVED {server.count}", flush=True)


if __name__ == "__main__":
    main()
