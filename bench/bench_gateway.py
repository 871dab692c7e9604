"""What Modelgate adds to a premium chat call, measured with wrk against gunicorn as `manage.py serve` runs it.

Side by side, in one run: (a) POST /v1/chat/completions through Modelgate (auth, route, record, call the
provider, respond) in front of a fake OpenAI server that answers at once; (b) that fake server called
directly with the same body; (c) a bare Django view on the same server, the framework's floor: GET /health of the
same gunicorn, through every middleware, with no key, no serializer and no database.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from harness import ROOT, Table

DURATION_SECONDS = 5
ROUNDS = 3
WARMUP_SECONDS = 2
LOADS = [(1, 1), (2, 32)]  # (wrk threads, connections)
WORKERS, THREADS = 1, 8
READY_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 15
TARGET_ADDED_P50_MS = 2.0
TARGET_THROUGHPUT_RATIO = 0.5

SPEC_SLUG = "bench-gpt"
OPERATOR_KEY = "sk-bench-operator-key"
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "In one sentence, why do connection pools make HTTP clients faster?"},
]

# One script per target. `response` counts every answer that is not 2xx (wrk's own "Non-2xx or 3xx"
# line lets redirects through); `done` sums the per-thread counts.
LUA = """
wrk.method = "{method}"
{body}
{headers}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) not_2xx = 0; first_status = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then
    not_2xx = not_2xx + 1
    if first_status == 0 then first_status = status end
  end
end
function done(summary, latency, requests)
  local bad, status = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("not_2xx")
    if status == 0 then status = thread:get("first_status") end
  end
  io.write(string.format("MG_NOT_2XX %d %d\\n", bad, status))
end
"""


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    script: Path
    server: psutil.Process  # whose CPU time the target's requests cost


@dataclass(frozen=True)
class Measure:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # the server's CPU time per request: unlike latency, barely moved by other work on the machine


def run() -> Table:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("The gateway benchmark needs the wrk load generator: apt-get install wrk")
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" Copyright")[0]
    load_before = os.getloadavg()[0]

    from django.conf import settings
    from django.db import connection
    from django.db.models import Count

    from routing.models import InferenceRecord
    from tenants import services

    tenant = services.create_tenant(slug="bench-gateway", name="Bench gateway")
    _, secret = services.issue_api_key(tenant=tenant, name="bench-gateway")
    body = json.dumps({"model": SPEC_SLUG, "messages": MESSAGES, "max_tokens": 16})

    db = settings.DATABASES["default"]
    database_url = f"postgresql://{db['USER']}@{db['HOST'].replace('/', '%2F')}:{db['PORT']}/{connection.settings_dict['NAME']}"
    children: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        workdir = Path(tmp)
        try:
            fake = _start_fake(workdir)
            children.append(fake)
            fake_url = fake_premium_chat(fake, slug=SPEC_SLUG, display_name="Bench GPT")

            port = _free_port()
            gateway_url = f"http://127.0.0.1:{port}"
            gunicorn = _start_gunicorn(workdir, bind=f"127.0.0.1:{port}", database_url=database_url)
            children.append(gunicorn)
            _wait_ready(gateway_url, gunicorn, workdir)
            started = time.perf_counter()
            _check_one_answer(gateway_url, body, secret)
            first_answer_ms = (time.perf_counter() - started) * 1000

            server, provider = psutil.Process(gunicorn.pid), psutil.Process(fake.pid)
            targets = {
                "a": Target("(a) Modelgate POST /v1/chat/completions → fake provider", f"{gateway_url}/v1/chat/completions",
                            _script(workdir / "a.lua", "POST", body, {"Authorization": f"Bearer {secret}"}), server),
                "b": Target("(b) fake provider direct POST /v1/chat/completions", f"{fake_url}/v1/chat/completions",
                            _script(workdir / "b.lua", "POST", body, {"Authorization": f"Bearer {OPERATOR_KEY}"}), provider),
                "c": Target("(c) bare Django view: GET /health, same server and middleware", f"{gateway_url}/health",
                            _script(workdir / "c.lua", "GET", None, {}), server),
            }
            answered_a = 1  # _check_one_answer
            for name, target in targets.items():
                measure = _wrk(wrk, target, threads=2, connections=32, seconds=WARMUP_SECONDS)
                answered_a += measure.requests if name == "a" else 0

            sdk = _sdk_client(fake_url)
            _sdk_loop(sdk, seconds=WARMUP_SECONDS)
            results: dict[tuple[str, int], list[Measure]] = {}
            for _ in range(ROUNDS):
                for threads, connections in LOADS:
                    for name, target in targets.items():  # interleaved, so that drift hits every target alike
                        measure = _wrk(wrk, target, threads=threads, connections=connections, seconds=DURATION_SECONDS)
                        results.setdefault((name, connections), []).append(measure)
                        answered_a += measure.requests if name == "a" else 0
                    if connections == 1:
                        results.setdefault(("d", 1), []).append(_sdk_loop(sdk, seconds=DURATION_SECONDS))
        finally:
            for child in reversed(children):
                _stop(child)
        gunicorn_log = (workdir / "gunicorn.log").read_text(errors="replace")

    statuses = {row["status"]: row["n"] for row in
                InferenceRecord.objects.filter(tenant=tenant).values("status").annotate(n=Count("id"))}
    recorded = sum(statuses.values())
    if statuses.get(InferenceRecord.Status.OK, 0) != recorded or recorded < answered_a:
        raise RuntimeError(
            f"wrk counted {answered_a} answers of (a) but the records are {statuses}; gunicorn said:\n{gunicorn_log[-3000:]}"
        )

    def median(name: str, connections: int, field: str) -> float:
        return statistics.median(getattr(m, field) for m in results[(name, connections)])

    rows: list[list[object]] = []
    for _, connections in LOADS:
        for name, target in targets.items():
            rows.append([target.label, connections, median(name, connections, "rps"),
                         median(name, connections, "p50_ms"), median(name, connections, "p99_ms"),
                         median(name, connections, "cpu_ms")])
        if connections == 1:
            rows.append([SDK_LABEL, 1, median("d", 1, "rps"), median("d", 1, "p50_ms"), median("d", 1, "p99_ms"),
                         median("d", 1, "cpu_ms")])
    added = median("a", 1, "p50_ms") - median("b", 1, "p50_ms")
    sdk_added = median("d", 1, "p50_ms") - median("b", 1, "p50_ms")
    ratio = median("a", 32, "rps") / median("c", 32, "rps")
    rows.append([f"added by Modelgate at p50, c=1: p50(a) − p50(b) (target ≤ {TARGET_ADDED_P50_MS:g} ms: "
                 f"{'met' if added <= TARGET_ADDED_P50_MS else 'missed'})", 1, "", round(added, 2), "", ""])
    rows.append(["of which the official openai SDK alone: p50(d) − p50(b)", 1, "", round(sdk_added, 2), "", ""])
    rows.append([f"throughput (a)/(c) at c=32 (target ≥ {TARGET_THROUGHPUT_RATIO:.0%}: "
                 f"{'met' if ratio >= TARGET_THROUGHPUT_RATIO else 'missed'})", 32, f"{ratio:.0%}", "", "", ""])
    return Table(
        title="Gateway overhead — wrk against gunicorn (gthread), premium chat in front of an instant fake provider",
        columns=["target", "connections", "requests/s", "p50 ms", "p99 ms", "server CPU ms/request"],
        rows=rows,
        notes=[
            f"{wrk_version}; each cell is the median of {ROUNDS} runs of {DURATION_SECONDS} s with `--latency` "
            f"(`-t1 -c1` and `-t2 -c32`), targets interleaved, after a {WARMUP_SECONDS} s warm-up of each; every answer was 2xx.",
            f"Modelgate: `python -m gunicorn config.wsgi:application --config platform/config/gunicorn_conf.py "
            f"--workers {WORKERS} --threads {THREADS}` as `manage.py serve` starts it, MODELGATE_LOG_LEVEL=WARNING, "
            "embedded PostgreSQL over a Unix socket, database cache.",
            "The fake OpenAI server (tests/routing/fake_providers.py, a threaded http.server) runs in its own process; "
            "Modelgate reaches it through the official openai SDK with the operator's stored (encrypted) credential. "
            "The fake sends with TCP_NODELAY and a listen backlog of 128 (see bench/gateway_fake_server.py).",
            "(d) is the floor a gateway built on the official SDK starts from: the same `openai` client Modelgate "
            "uses (max_retries=0, its own httpx connection pool), called in a loop from the benchmark process, one "
            "request at a time; its CPU column is the loop's own process time.",
            f"The first premium request after start took {first_answer_ms:,.0f} ms (imports and SDK client); "
            "the warm-up keeps it out of the table.",
            f"Every request of (a) was recorded: {recorded} inference records, all `ok`, for the {answered_a} answers wrk "
            "counted (records also cover requests still in flight when a run ended).",
            "Server CPU: user and system time of gunicorn's processes for (a) and (c), of the fake's for (b), during the "
            "run, per request wrk counted; for (a) it leaves out what PostgreSQL and the fake spend on the same request.",
            f"wrk, gunicorn, the fake provider and PostgreSQL share the machine's {os.cpu_count()} cores; its 1-minute "
            f"load average was {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after (other work slows every "
            "target, (a) at c=1 most: each of its requests waits for the CPU several times).",
        ],
    )


SDK_LABEL = "(d) the openai SDK alone: chat.completions.create → fake provider, one Python thread"


def _sdk_client(fake_url: str):
    import openai

    return openai.OpenAI(base_url=f"{fake_url}/v1", api_key=OPERATOR_KEY, max_retries=0, timeout=30)


def _sdk_loop(client, *, seconds: float) -> Measure:
    latencies: list[float] = []
    cpu_started, started = time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        client.chat.completions.create(model="gpt-bench-upstream", messages=MESSAGES, max_tokens=16)
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    latencies.sort()
    return Measure(
        rps=len(latencies) / elapsed, p50_ms=statistics.median(latencies),
        p99_ms=latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        cpu_ms=cpu * 1000 / len(latencies), requests=len(latencies),
    )


# --- children ----------------------------------------------------------------------------------
def _start_fake(workdir: Path) -> subprocess.Popen:
    with (workdir / "fake.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "gateway_fake_server.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True, cwd=ROOT,
        )


def fake_premium_chat(fake: subprocess.Popen, *, slug: str, display_name: str) -> str:
    """Register the started fake as a premium chat model reached with the operator's stored credential,
    as an operator would; returns its base URL."""
    from registry.models import ModelSpec
    from routing.models import ProviderCredential

    fake_url = f"http://127.0.0.1:{_read_port(fake)}"
    credential = ProviderCredential(tenant=None, kind="openai", base_url=f"{fake_url}/v1")
    credential.set_api_key(OPERATOR_KEY)
    credential.save()
    ModelSpec.objects.create(
        slug=slug, display_name=display_name, task="generation", backend="openai", source_kind="provider",
        source="gpt-bench-upstream", tier="premium", options={"base_url": f"{fake_url}/v1"},
        price_input_per_1k_tokens="0.5", price_output_per_1k_tokens="1.5",
    )
    return fake_url


def _read_port(fake: subprocess.Popen) -> int:
    ready, _, _ = select.select([fake.stdout], [], [], READY_TIMEOUT_SECONDS)
    line = fake.stdout.readline() if ready else ""  # the child prints its port first, or exits
    if not line.startswith("PORT "):
        raise RuntimeError(f"The fake provider did not start (printed {line!r}).")
    return int(line.split()[1])


def _start_gunicorn(workdir: Path, *, bind: str, database_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "platform"), os.environ.get("PYTHONPATH")])),
        "DATABASE_URL": database_url,
        "MODELGATE_LOG_LEVEL": "WARNING",
        "MODELGATE_PREPARE_MODELS_ON_START": "0",
    }
    with (workdir / "gunicorn.log").open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "config.wsgi:application",
                "--config", str(ROOT / "platform" / "config" / "gunicorn_conf.py"),
                "--bind", bind, "--workers", str(WORKERS), "--threads", str(THREADS),
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(base_url: str, gunicorn: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if gunicorn.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{base_url}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    log = (workdir / "gunicorn.log").read_text(errors="replace")
    raise RuntimeError(f"gunicorn was not ready within {READY_TIMEOUT_SECONDS}s:\n{log[-3000:]}")


def _check_one_answer(base_url: str, body: str, secret: str) -> None:
    """Before any load: the gateway really answers through the premium model, not some fallback."""
    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions", data=body.encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer, model, tier = json.loads(response.read()), response.headers["x-modelgate-model"], response.headers["x-modelgate-tier"]
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"The gateway answered {exc.code}: {exc.read()[:2000]!r}") from None
    if (model, tier) != (SPEC_SLUG, "premium") or not answer["choices"][0]["message"]["content"]:
        raise RuntimeError(f"Unexpected answer from {model} ({tier}): {answer}")


def _stop(child: subprocess.Popen) -> None:
    """End a child and everything it started (its own session), politely first."""
    if child.stdin is not None:
        try:
            child.stdin.close()  # the fake provider leaves when its input ends
        except OSError:
            pass
    if child.poll() is None:
        try:
            child.wait(timeout=0.5 if child.stdin is not None else 0)
        except subprocess.TimeoutExpired:
            pass
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=STOP_TIMEOUT_SECONDS)
        except ProcessLookupError:
            pass
    if child.stdout is not None:
        child.stdout.close()


# --- wrk ---------------------------------------------------------------------------------------
def _script(path: Path, method: str, body: str | None, headers: dict[str, str]) -> Path:
    if body is not None:
        assert "]==]" not in body
        headers = {"Content-Type": "application/json", **headers}
    lines = [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text(LUA.format(method=method, body=f"wrk.body = [==[{body}]==]" if body is not None else "",
                               headers="\n".join(lines)))
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk(wrk: str, target: Target, *, threads: int, connections: int, seconds: int) -> Measure:
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
               "-s", str(target.script), target.url]
    cpu_before = _cpu_seconds(target.server)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    cpu = _cpu_seconds(target.server) - cpu_before
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed on {target.label}: {done.stderr or out}")

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out, re.M)
        if match is None:
            raise RuntimeError(f"wrk's output on {target.label} lacks {pattern!r}:\n{out}\n{done.stderr}")
        return match

    bad, first_status = (int(x) for x in find(r"^MG_NOT_2XX (\d+) (\d+)$").groups())
    non_2xx_3xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if bad or non_2xx_3xx or errors:
        raise RuntimeError(
            f"{target.label} at {connections} connections: {bad} answers were not 2xx (first: {first_status}); "
            f"wrk said:\n{out}"
        )

    def latency(percent: int) -> float:
        value, unit = find(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$").groups()
        return float(value) * _UNITS_MS[unit]

    requests = int(find(r"^\s+(\d+) requests in ").group(1))
    rps = float(find(r"^Requests/sec:\s+([\d.]+)").group(1))
    if requests == 0:
        raise RuntimeError(f"{target.label}: no answer at all; wrk said:\n{out}")
    return Measure(requests=requests, rps=rps, p50_ms=latency(50), p99_ms=latency(99), cpu_ms=cpu * 1000 / requests)


def _cpu_seconds(server: psutil.Process) -> float:
    """User and system time of a server and its workers so far."""
    return sum(sum(process.cpu_times()[:2]) for process in (server, *server.children(recursive=True)))
