"""The model tier: web workers that hold no models in front of one model server, against the alternatives.

Side by side, in one run: (1) premium chat (and local embeddings) through `manage.py serve` with its default
web workers (one per core) and with one, driven by wrk; (2) local inference through the model server
(inference.client.RemotePool) against the same pool in process (inference.pool.ModelPool): lid.176 latency,
MiniLM throughput from concurrent callers in two processes; (3) the memory of a serve's processes with the
starter pack loaded, against one process holding it; (4) the CPU time each kind of process spends per
request during (1) and (2).
"""
from __future__ import annotations

import base64
import json
import os
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench_gateway import MESSAGES, Measure, Target, _free_port, _script, _start_fake, _stop, _wrk, fake_premium_chat
from harness import ROOT, Table, corpus

HERE = Path(__file__).resolve().parent
ENV_PREFIX = "MODELGATE_BENCH_MODELTIER_"


def _size(name: str, default: int) -> int:
    """A size of the run, from MODELGATE_BENCH_MODELTIER_<name> when set."""
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"{ENV_PREFIX}{name} must be a whole number; got {raw!r}.") from None
    if value < 1:
        raise RuntimeError(f"{ENV_PREFIX}{name} must be at least 1; got {value}.")
    return value


SECONDS = _size("SECONDS", 5)  # one wrk run
ROUNDS = _size("ROUNDS", 5)  # wrk runs per target and configuration, interleaved
WARMUP_SECONDS = _size("WARMUP_SECONDS", 2)
CONNECTIONS = _size("CONNECTIONS", 32)
LID_CALLS = _size("LID_CALLS", 400)  # calls per round and side
LID_ROUNDS = _size("LID_ROUNDS", 7)
EMBED_PROCESSES = _size("EMBED_PROCESSES", 2)
EMBED_THREADS = _size("EMBED_THREADS", 16)  # per process; in process, EMBED_PROCESSES × EMBED_THREADS threads
EMBED_REQUESTS = _size("EMBED_REQUESTS", 8)  # per caller and round
EMBED_ROUNDS = _size("EMBED_ROUNDS", 5)

TARGET_WORKER_SCALING = 1.7
TARGET_ADDED_P50_MS = 0.5
TARGET_REMOTE_THROUGHPUT = 0.9
TARGET_MEMORY_RATIO = 1.15

CHAT_SLUG = "bench-modeltier-gpt"
EMBEDDING_SLUG = "minilm-l6"
LID_SLUG = "lid-176"
LID_TEXT = "Where is the nearest train station?"
READY_TIMEOUT_SECONDS = 120
SERVE_STOP_SECONDS = 90
CALLER_READY_SECONDS = 60
# Settings a serve must take from its own defaults here, whatever the shell that runs the benchmark set.
SERVE_DEFAULTS = ("MODELGATE_WEB_WORKERS", "MODELGATE_MODEL_SERVERS", "MODELGATE_MODEL_SERVER_SOCKET", "MODELGATE_BIND")
CPU_KINDS = ("web", "model server", "postgres", "other")


@dataclass
class Serve:
    """One `manage.py serve` (no task cluster) with its own data directory, port and model server socket."""

    label: str
    workers: int
    process: subprocess.Popen
    url: str
    models: str  # its model server's address
    log: Path

    def processes(self) -> dict[str, list[psutil.Process]]:
        root = psutil.Process(self.process.pid)
        kinds: dict[str, list[psutil.Process]] = {"supervisor": [root], "model server": [], "web master": [], "web workers": []}
        for child in root.children(recursive=True):
            try:
                command, parent = " ".join(child.cmdline()), child.ppid()
            except psutil.Error:
                continue
            if "modelserver" in command:
                kinds["model server"].append(child)
            elif "gunicorn" in command:
                kinds["web master" if parent == root.pid else "web workers"].append(child)
        return kinds

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class Run:
    measure: Measure
    cpu_ms: dict[str, float]  # per request, by kind of process
    batches: int  # MiniLM batches the model server ran meanwhile
    items: int


@dataclass
class Side:
    """One side of a local comparison: its rounds' rates and latencies, and the CPU it cost."""

    rates: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_KINDS, 0.0))
    operations: int = 0
    batches: int = 0
    items: int = 0

    def cpu_ms(self, kind: str) -> float:
        return self.cpu_seconds[kind] * 1000 / self.operations


def run() -> Table:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("The model tier benchmark needs the wrk load generator: apt-get install wrk")
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" Copyright")[0]
    run_started, load_before = time.perf_counter(), os.getloadavg()[0]

    from django.conf import settings
    from django.db import connection
    from django.db.models import Count

    from inference.client import RemotePool
    from inference.pool import ModelPool
    from registry.models import ModelSpec
    from registry.services import ensure_prepared, register_starter_pack
    from routing.models import InferenceRecord
    from tenants import services

    register_starter_pack()
    specs = list(ModelSpec.objects.filter(enabled=True, tier=ModelSpec.Tier.LOCAL).order_by("slug"))
    started = time.perf_counter()
    for spec in specs:
        ensure_prepared(spec)  # once per machine (SmolLM2's conversion), so that no load below waits for it
    prepare_seconds = time.perf_counter() - started
    configs = {spec.slug: spec.to_config() for spec in specs}

    db = settings.DATABASES["default"]
    database = connection.settings_dict["NAME"]
    database_url = f"postgresql://{db['USER']}@{db['HOST'].replace('/', '%2F')}:{db['PORT']}/{database}"
    baseline = _one_process_memory(database_url)

    tenant = services.create_tenant(slug="bench-modeltier", name="Bench model tier")
    _, secret = services.issue_api_key(tenant=tenant, name="bench-modeltier")
    chat_body = json.dumps({"model": CHAT_SLUG, "messages": MESSAGES, "max_tokens": 16})
    embed_text = corpus(1)[0]
    embed_body = json.dumps({"model": EMBEDDING_SLUG, "input": embed_text, "encoding_format": "base64"})

    children: list[subprocess.Popen] = []
    serves: list[Serve] = []
    with tempfile.TemporaryDirectory(prefix="bench-modeltier-") as tmp:
        workdir = Path(tmp)
        try:
            fake = _start_fake(workdir)
            children.append(fake)
            fake_premium_chat(fake, slug=CHAT_SLUG, display_name="Bench model tier GPT")
            for label, workers in ((f"default: {os.cpu_count()} web workers (one per core)", None), ("1 web worker (--workers 1)", 1)):
                serves.append(_start_serve(workdir, label, workers=workers, database_url=database_url,
                                           secret_key=settings.SECRET_KEY, model_cache=settings.MODELGATE_MODEL_CACHE))
            default = serves[0]

            # (3) memory, first: fresh processes as `make run` leaves them, then the whole starter pack loaded.
            fresh = {serve.label: _memory(serve) for serve in serves}
            load_seconds = {}
            for serve in serves:
                remote = RemotePool(serve.models)
                started = time.perf_counter()
                for spec in specs:
                    remote.load(configs[spec.slug])
                load_seconds[serve.label] = time.perf_counter() - started
                missing = sorted(set(configs) - set(remote.loaded()))
                if missing:
                    raise RuntimeError(f"The model server of {serve.label} did not keep {missing} loaded.")
            loaded = {serve.label: _memory(serve) for serve in serves}

            # (1) and (4): wrk against each serve, targets and configurations interleaved.
            for serve in serves:
                _check_chat(serve.url, chat_body, secret)
                _check_embedding(serve.url, embed_body, secret)
            targets = {
                "chat": ("premium chat POST /v1/chat/completions → fake provider", "/v1/chat/completions", chat_body),
                "embed": (f"local embeddings POST /v1/embeddings ({EMBEDDING_SLUG}, one text)", "/v1/embeddings", embed_body),
            }
            wrk_targets = {
                (name, serve.label): Target(f"{label} — {serve.label}", f"{serve.url}{path}",
                                            _script(workdir / f"{name}-{serves.index(serve)}.lua", "POST", body,
                                                    {"Authorization": f"Bearer {secret}"}),
                                            psutil.Process(serve.process.pid))
                for name, (label, path, body) in targets.items() for serve in serves
            }
            answered = dict.fromkeys(targets, 2)  # the checks above
            for (name, label), target in wrk_targets.items():
                serve = next(s for s in serves if s.label == label)
                answered[name] += _gateway_run(wrk, target, serve, fake, database, seconds=WARMUP_SECONDS).measure.requests
            runs: dict[tuple[str, str], list[Run]] = {}
            for round_ in range(ROUNDS):
                for name in targets:
                    for serve in (serves if round_ % 2 == 0 else serves[::-1]):
                        measured = _gateway_run(wrk, wrk_targets[(name, serve.label)], serve, fake, database, seconds=SECONDS)
                        runs.setdefault((name, serve.label), []).append(measured)
                        answered[name] += measured.measure.requests

            # (2) and (4): the model server of the default serve against a pool in this process.
            server = default.processes()["model server"][0]
            remote = RemotePool(default.models)
            local = ModelPool(memory_budget_mb=settings.MODELGATE_MODEL_MEMORY_MB, batching=settings.MODELGATE_BATCHING)
            try:
                lid = _lid_latency(remote, local, configs[LID_SLUG], server)
                embedding = _embedding_throughput(remote, local, configs[EMBEDDING_SLUG], server, default.models, workdir)
            finally:
                local.shutdown()
            after = {serve.label: _memory(serve) for serve in serves}
            supervisor_cpu = {serve.label: _seconds(serve.processes()["supervisor"][0]) for serve in serves}
        except BaseException:
            for serve in serves:
                if serve.process.poll() is not None:
                    print(f"{serve.label} exited ({serve.process.returncode}); it said:\n{serve.log_tail()}", file=sys.stderr)
            raise
        finally:
            for serve in serves:
                _stop_serve(serve)
            for child in reversed(children):
                _stop(child)

    statuses = {(row["model_slug"], row["status"]): row["n"] for row in
                InferenceRecord.objects.filter(tenant=tenant).values("model_slug", "status").annotate(n=Count("id"))}
    for name, slug in (("chat", CHAT_SLUG), ("embed", EMBEDDING_SLUG)):
        records = {status: n for (model, status), n in statuses.items() if model == slug}
        if records.get(InferenceRecord.Status.OK, 0) != sum(records.values()) or sum(records.values()) < answered[name]:
            raise RuntimeError(f"wrk counted {answered[name]} answers of {slug} but its records are {records}.")

    return _table(
        runs=runs, serves=serves, lid=lid, embedding=embedding, baseline=baseline, fresh=fresh, loaded=loaded, after=after,
        load_seconds=load_seconds, prepare_seconds=prepare_seconds, answered=answered, statuses=statuses,
        supervisor_cpu=supervisor_cpu, wrk_version=wrk_version, load_before=load_before,
        runtime=time.perf_counter() - run_started, embed_text=embed_text, lid_wait_ms=configs[LID_SLUG].max_wait_ms,
    )


# --- serve ---------------------------------------------------------------------------------------
def _start_serve(workdir: Path, label: str, *, workers: int | None, database_url: str, secret_key: str,
                 model_cache: Path) -> Serve:
    """`manage.py serve` as `make run` starts it, without the task cluster (not on the request path), on the
    benchmark's database; `workers` None leaves MODELGATE_WEB_WORKERS at its default."""
    name = "default" if workers is None else f"workers-{workers}"
    data = workdir / name
    data.mkdir()
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key not in SERVE_DEFAULTS}
    env.update({
        "DATABASE_URL": database_url,
        "MODELGATE_DATA_DIR": str(data),  # its own pid file and model server socket
        "MODELGATE_MODEL_CACHE": str(model_cache),  # the weights prepared above
        "SECRET_KEY": secret_key,  # the same key as this process: the provider credential decrypts there
        "MODELGATE_LOG_LEVEL": "WARNING",
        "MODELGATE_PREPARE_MODELS_ON_START": "0",
        "HF_HUB_OFFLINE": "1",
    })
    command = [sys.executable, str(ROOT / "manage.py"), "serve", "--bind", f"127.0.0.1:{port}", "--no-qcluster"]
    if workers is not None:
        command += ["--workers", str(workers)]
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    serve = Serve(label=label, workers=workers or os.cpu_count() or 1, process=process, url=f"http://127.0.0.1:{port}",
                  models=f"unix://{data / 'modelserver.sock'}", log=log)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{serve.url}/ready", timeout=2) as response:
                if response.status == 200 and len(serve.processes()["web workers"]) == serve.workers:
                    return serve
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    _stop_serve(serve)
    raise RuntimeError(f"`manage.py serve` ({label}) was not ready within {READY_TIMEOUT_SECONDS}s:\n{serve.log_tail()}")


def _stop_serve(serve: Serve) -> None:
    """SIGTERM, as `make stop` does: serve stops its web workers, then its model server. Whatever it
    started and left behind is ended by its own pid."""
    try:
        started = psutil.Process(serve.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    if serve.process.poll() is None:
        serve.process.send_signal(signal.SIGTERM)
        try:
            serve.process.wait(timeout=SERVE_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            serve.process.kill()
            serve.process.wait()
    _, alive = psutil.wait_procs(started, timeout=10)
    for process in alive:
        process.kill()


def _post(url: str, body: str, secret: str) -> tuple[dict[str, Any], Any]:
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} answered {exc.code}: {exc.read()[:2000]!r}") from None


def _check_chat(base_url: str, body: str, secret: str) -> None:
    """Before any load: the premium model really answers, not some fallback."""
    answer, headers = _post(f"{base_url}/v1/chat/completions", body, secret)
    if (headers["x-modelgate-model"], headers["x-modelgate-tier"]) != (CHAT_SLUG, "premium") or not answer["choices"][0]["message"]["content"]:
        raise RuntimeError(f"Unexpected chat answer from {headers['x-modelgate-model']}: {answer}")


def _check_embedding(base_url: str, body: str, secret: str) -> None:
    answer, headers = _post(f"{base_url}/v1/embeddings", body, secret)
    vector = base64.b64decode(answer["data"][0]["embedding"])
    if (headers["x-modelgate-model"], headers["x-modelgate-tier"]) != (EMBEDDING_SLUG, "local") or len(vector) != 384 * 4:
        raise RuntimeError(f"Unexpected embedding from {headers['x-modelgate-model']}: {len(vector)} bytes")


# --- CPU and memory of processes ----------------------------------------------------------------
def _seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _reaped_children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _postgres_backends(database: str) -> list[psutil.Process]:
    """The server processes of the benchmark's database (`postgres: user database [local] …`); PostgreSQL's
    shared processes (WAL writer, checkpointer…) also serve other work on this machine and are left out."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        words = " ".join(process.info["cmdline"] or []).split()
        if len(words) >= 3 and words[0] == "postgres:" and words[2] == database:
            found.append(process)
    return found


def _cpu_snapshot(groups: dict[str, list[psutil.Process]]) -> dict[str, dict[int, float]]:
    return {kind: {process.pid: _seconds(process) for process in processes} for kind, processes in groups.items()}


def _cpu_delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """Seconds each kind spent between the snapshots (a process born meanwhile counts from zero)."""
    return {kind: sum(seconds - before.get(kind, {}).get(pid, 0.0) for pid, seconds in pids.items())
            for kind, pids in after.items()}


def _memory(serve: Serve) -> dict[str, list[dict[str, Any]]]:
    """RSS and PSS (MB) of every process of a serve; PSS splits shared pages between the processes that map them."""
    found: dict[str, list[dict[str, Any]]] = {}
    for kind, processes in serve.processes().items():
        for process in processes:
            info = process.memory_full_info()
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            found.setdefault(kind, []).append({"pid": process.pid, "rss": info.rss / 2**20, "pss": info.pss / 2**20,
                                               "torch": "libtorch_cpu" in maps})
    return found


def _total(memory: dict[str, list[dict[str, Any]]], kinds: tuple[str, ...], measure: str = "rss") -> float:
    return sum(entry[measure] for kind in kinds for entry in memory.get(kind, []))


def _one_process_memory(database_url: str) -> dict[str, Any]:
    """bench_memory.py's measurement, in this run: a fresh Django process loading the whole starter pack."""
    import bench_memory

    code = bench_memory.CHILD.format(root=str(ROOT), platform=str(ROOT / "platform"))
    env = {**os.environ, "DATABASE_URL": database_url, "MODELGATE_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"The one-process memory child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- (1) the gateway under wrk -------------------------------------------------------------------
def _gateway_run(wrk: str, target: Target, serve: Serve, fake: subprocess.Popen, database: str, *, seconds: int) -> Run:
    from inference.client import RemotePool

    def groups() -> dict[str, list[psutil.Process]]:
        processes = serve.processes()
        return {"web": processes["web master"] + processes["web workers"], "model server": processes["model server"],
                "postgres": _postgres_backends(database), "other": [psutil.Process(fake.pid)]}

    models = RemotePool(serve.models)
    stats_before, cpu_before, wrk_before = models.stats(EMBEDDING_SLUG), _cpu_snapshot(groups()), _reaped_children_seconds()
    try:
        measure = _wrk(wrk, target, threads=2, connections=CONNECTIONS, seconds=seconds)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n`manage.py serve` said:\n{serve.log_tail()}") from None
    cpu, stats = _cpu_delta(cpu_before, _cpu_snapshot(groups())), models.stats(EMBEDDING_SLUG)
    cpu["wrk"] = _reaped_children_seconds() - wrk_before  # wrk is the only child this process waits for meanwhile
    return Run(measure=measure, cpu_ms={kind: seconds * 1000 / measure.requests for kind, seconds in cpu.items()},
               batches=(stats.get("batches") or 0) - (stats_before.get("batches") or 0),
               items=(stats.get("items") or 0) - (stats_before.get("items") or 0))


# --- (2) local inference: the model server against a pool in process -----------------------------
def _lid_latency(remote, local, config, server: psutil.Process) -> dict[str, Side]:
    """One caller, one short text at a time: RemotePool.infer against ModelPool.infer, rounds interleaved."""
    answers = {"in process": local.infer(config, LID_TEXT), "model server": remote.infer(config, LID_TEXT)}
    if answers["in process"] != answers["model server"]:
        raise RuntimeError(f"lid.176 answers differently in process and through the model server: {answers}")
    me = psutil.Process()
    pools = {"in process": local, "model server": remote}
    sides = {name: Side() for name in pools}
    for pool in pools.values():
        for _ in range(LID_CALLS // 4):
            pool.infer(config, LID_TEXT)
    for round_ in range(LID_ROUNDS):
        for name in (list(pools) if round_ % 2 == 0 else list(pools)[::-1]):
            pool, side = pools[name], sides[name]
            caller_before, server_before, latencies = _seconds(me), _seconds(server), []
            started = time.perf_counter()
            for _ in range(LID_CALLS):
                t0 = time.perf_counter()
                pool.infer(config, LID_TEXT)
                latencies.append((time.perf_counter() - t0) * 1000)
            side.rates.append(LID_CALLS / (time.perf_counter() - started))
            side.cpu_seconds["other"] += _seconds(me) - caller_before
            side.cpu_seconds["model server"] += _seconds(server) - server_before
            side.p50s.append(statistics.median(latencies))
            side.latencies += latencies
            side.operations += LID_CALLS
    return sides


def _embedding_throughput(remote, local, config, server: psutil.Process, address: str, workdir: Path) -> dict[str, Side]:
    """Concurrent single-text callers: EMBED_PROCESSES processes × EMBED_THREADS threads on the model server,
    against as many threads on one pool in this process; the same texts, rounds interleaved."""
    from inference import wire

    callers_total = EMBED_PROCESSES * EMBED_THREADS
    per_round = callers_total * EMBED_REQUESTS
    texts = corpus(per_round)
    job = workdir / "embedding-job.msgpack"
    job.write_bytes(wire.packb({"config": config, "texts": texts, "per_thread": EMBED_REQUESTS}))
    log = (workdir / "callers.log").open("wb")
    callers = [
        subprocess.Popen([sys.executable, str(HERE / "modeltier_callers.py"), address, str(job), str(EMBED_THREADS),
                          str(index * EMBED_THREADS)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, start_new_session=True)
        for index in range(EMBED_PROCESSES)
    ]
    executor = ThreadPoolExecutor(callers_total)
    me = psutil.Process()
    try:
        for caller in callers:
            if _line(caller, workdir) != "READY":
                raise RuntimeError(f"A caller process did not start:\n{(workdir / 'callers.log').read_text()[-3000:]}")

        def in_process(index: int) -> list[float]:
            latencies = []
            for j in range(EMBED_REQUESTS):
                t0 = time.perf_counter()
                local.infer(config, texts[(index * EMBED_REQUESTS + j) % len(texts)])
                latencies.append((time.perf_counter() - t0) * 1000)
            return latencies

        def round_in_process() -> tuple[float, list[float]]:
            started = time.perf_counter()
            latencies = [x for mine in executor.map(in_process, range(callers_total)) for x in mine]
            return time.perf_counter() - started, latencies

        def round_remote() -> tuple[float, list[float]]:
            for caller in callers:
                caller.stdin.write("GO\n")
                caller.stdin.flush()
            answers = [json.loads(_line(caller, workdir)) for caller in callers]
            elapsed = max(a["end"] for a in answers) - min(a["start"] for a in answers)
            return elapsed, [x for a in answers for x in a["latencies_ms"]]

        local.infer(config, "warm up")
        rounds: dict[str, Callable[[], tuple[float, list[float]]]] = {"in process": round_in_process, "model server": round_remote}
        pools = {"in process": local, "model server": remote}
        for once in rounds.values():
            once()  # threads started, connections open, the allocator warm
        sides = {name: Side() for name in rounds}
        for round_ in range(EMBED_ROUNDS):
            for name in (list(rounds) if round_ % 2 == 0 else list(rounds)[::-1]):
                side, stats_before = sides[name], pools[name].stats(config.slug)
                groups = {"model server": [server], "other": [me] if name == "in process" else [psutil.Process(c.pid) for c in callers]}
                cpu_before = _cpu_snapshot(groups)
                elapsed, latencies = rounds[name]()
                cpu, stats = _cpu_delta(cpu_before, _cpu_snapshot(groups)), pools[name].stats(config.slug)
                items = stats["items"] - stats_before["items"]
                if items != per_round:
                    raise RuntimeError(f"{name}: the pool ran {items} texts in a round of {per_round} requests.")
                side.rates.append(per_round / elapsed)
                side.p50s.append(statistics.median(latencies))
                side.latencies += latencies
                side.operations += per_round
                side.batches += stats["batches"] - stats_before["batches"]
                side.items += items
                for kind, seconds in cpu.items():
                    side.cpu_seconds[kind] += seconds
        return sides
    finally:
        executor.shutdown()
        for caller in callers:
            _stop(caller)
        log.close()


def _line(child: subprocess.Popen, workdir: Path) -> str:
    ready, _, _ = select.select([child.stdout], [], [], CALLER_READY_SECONDS)
    line = child.stdout.readline().strip() if ready else ""
    if not line:
        raise RuntimeError(f"A caller process went silent:\n{(workdir / 'callers.log').read_text()[-3000:]}")
    return line


# --- the table -----------------------------------------------------------------------------------
def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def _table(*, runs, serves, lid, embedding, baseline, fresh, loaded, after, load_seconds, prepare_seconds, answered,
           statuses, supervisor_cpu, wrk_version, load_before, runtime, embed_text, lid_wait_ms) -> Table:
    from django.conf import settings

    default, single = serves

    def median(name: str, serve: Serve, pick: Callable[[Run], float]) -> float:
        return statistics.median(pick(r) for r in runs[(name, serve.label)])

    def cpu_cells(name: str, serve: Serve) -> list[object]:
        return [median(name, serve, lambda r, kind=kind: r.cpu_ms[kind]) for kind in CPU_KINDS]

    rows: list[list[object]] = []
    scaling = {}
    for name, title in (("chat", f"premium chat, wrk c={CONNECTIONS}"), ("embed", f"local embeddings ({EMBEDDING_SLUG}), wrk c={CONNECTIONS}")):
        one = median(name, single, lambda r: r.measure.rps)
        for serve in (single, default):
            rps = median(name, serve, lambda r: r.measure.rps)
            result = f"{rps:,.1f} req/s"
            if name == "embed":
                batches = sum(r.batches for r in runs[(name, serve.label)])
                result += f", server batch mean {sum(r.items for r in runs[(name, serve.label)]) / batches:.1f}"
            target = ""
            if serve is default:
                scaling[name] = rps / one
                if name == "chat":
                    target = f"≥ {TARGET_WORKER_SCALING:g}×: {_verdict(scaling[name] >= TARGET_WORKER_SCALING)}"
            rows.append([title, serve.label, result, median(name, serve, lambda r: r.measure.p50_ms),
                         f"{rps / one:.2f}×", target, *cpu_cells(name, serve)])

    added_lid = statistics.median(r - l for r, l in zip(lid["model server"].p50s, lid["in process"].p50s))
    for name, side in lid.items():
        remote = name == "model server"
        rows.append([
            "lid.176, one short text, one caller",
            "RemotePool.infer → model server" if remote else "ModelPool.infer in process",
            f"{statistics.median(side.rates):,.0f} calls/s", statistics.median(side.p50s),
            f"+{added_lid:.3f} ms" if remote else "", f"added p50 ≤ {TARGET_ADDED_P50_MS:g} ms: {_verdict(added_lid <= TARGET_ADDED_P50_MS)}" if remote else "",
            "—", side.cpu_ms("model server") if remote else "—", "—", side.cpu_ms("other"),
        ])
    rates = {name: statistics.median(side.rates) for name, side in embedding.items()}
    remote_ratio = rates["model server"] / rates["in process"]
    callers_total = EMBED_PROCESSES * EMBED_THREADS
    for name, side in embedding.items():
        remote = name == "model server"
        rows.append([
            f"{EMBEDDING_SLUG}, {callers_total} concurrent single-text callers",
            f"{EMBED_PROCESSES} processes × {EMBED_THREADS} threads → model server" if remote else f"{callers_total} threads, one pool in process",
            f"{rates[name]:,.1f} texts/s, {'server' if remote else 'pool'} batch mean {side.items / side.batches:.1f}",
            statistics.median(side.p50s), f"{rates[name] / rates['in process']:.2f}×",
            f"≥ {TARGET_REMOTE_THROUGHPUT:g}×: {_verdict(remote_ratio >= TARGET_REMOTE_THROUGHPUT)}" if remote else "",
            "—", side.cpu_ms("model server") if remote else "—", "—", side.cpu_ms("other"),
        ])

    tier = ("model server", "web workers")
    rows.append(["memory, whole starter pack loaded", "one process holding it (bench_memory.py's child)",
                 f"RSS {baseline['rss_mb']:,.0f} MB", "", "1.00×", "", "", "", "", ""])
    ratios = {}
    for serve in (single, default):
        rss, pss = _total(loaded[serve.label], tier), _total(loaded[serve.label], tier, "pss")
        ratios[serve.label] = rss / baseline["rss_mb"]
        rows.append(["memory, whole starter pack loaded",
                     f"model server + {serve.workers} web worker{'s' if serve.workers > 1 else ''}{' (default)' if serve is default else ''}",
                     f"RSS {rss:,.0f} MB (PSS {pss:,.0f})", "", f"{ratios[serve.label]:.2f}×",
                     f"≤ {TARGET_MEMORY_RATIO:g}×: {_verdict(ratios[serve.label] <= TARGET_MEMORY_RATIO)}", "", "", "", ""])

    def breakdown(memory: dict[str, list[dict[str, Any]]]) -> str:
        parts = []
        for kind in ("model server", "web workers", "web master", "supervisor"):
            for entry in memory.get(kind, []):
                parts.append(f"{kind.removesuffix('s') if kind == 'web workers' else kind} {entry['rss']:,.0f} (PSS {entry['pss']:,.0f})")
        return ", ".join(parts)

    all_kinds = ("model server", "web workers", "web master", "supervisor")
    memory_notes = []
    for serve in (single, default):
        memory_notes.append(
            f"{serve.label}: fresh — {breakdown(fresh[serve.label])}; starter pack loaded (in {load_seconds[serve.label]:.0f} s) — "
            f"{breakdown(loaded[serve.label])}; every process of the serve: RSS {_total(loaded[serve.label], all_kinds):,.0f} MB = "
            f"{_total(loaded[serve.label], all_kinds) / baseline['rss_mb']:.2f}× (PSS {_total(loaded[serve.label], all_kinds, 'pss'):,.0f}); "
            f"after every run below: model server + web workers RSS {_total(after[serve.label], tier):,.0f} MB "
            f"({_total(after[serve.label], tier) / baseline['rss_mb']:.2f}×)."
        )
    worker_torch = any(e["torch"] for serve in serves for e in loaded[serve.label].get("web workers", []))
    server_batches = {serve.label: sum(r.items for r in runs[("embed", serve.label)]) / sum(r.batches for r in runs[("embed", serve.label)])
                      for serve in serves}
    records = sum(statuses.values())
    threads = settings.MODELGATE_WEB_THREADS  # what the serves read from the same environment
    cores = os.cpu_count() or 1
    chat_cpu = {serve.label: median("chat", serve, lambda r: sum(r.cpu_ms.values())) for serve in serves}
    chat_wrk = {serve.label: median("chat", serve, lambda r: r.cpu_ms["wrk"]) for serve in serves}
    ceiling = cores * 1000 / chat_cpu[default.label]
    one_chat = median("chat", single, lambda r: r.measure.rps)
    notes = [
        "(1) Gateway: `manage.py serve --no-qcluster` (the supervisor `make run` runs, without the task cluster, which is "
        "not on the request path) twice, side by side on the benchmark database, each with its own data directory, "
        f"port and model server on a unix socket: one with MODELGATE_WEB_WORKERS at its default ({default.workers}, the "
        f"cores), one with `--workers 1`; {threads} threads per worker "
        f"(MODELGATE_WEB_THREADS). {wrk_version}, `-t2 -c{CONNECTIONS} --latency`; each cell is the median of {ROUNDS} "
        f"runs of {SECONDS} s, configurations and targets interleaved (the order alternating by round), after a "
        f"{WARMUP_SECONDS} s warm-up of each; every answer was 2xx. Chat: {CHAT_SLUG}, a premium spec in front of the "
        "fake OpenAI server of bench_gateway.py (bench/gateway_fake_server.py, its own process, reached through the official "
        "openai SDK); no model server work. Embeddings: one text of "
        f"{len(embed_text)} characters per request, `encoding_format: base64`, routed to {EMBEDDING_SLUG} on the serve's model server.",
        f"Throughput ratio of the default to one worker — premium chat {scaling['chat']:.2f}× (target ≥ {TARGET_WORKER_SCALING:g}×: "
        f"{_verdict(scaling['chat'] >= TARGET_WORKER_SCALING)}); local embeddings {scaling['embed']:.2f}× (no target). The "
        f"model server's MiniLM batches during the embedding runs: mean {server_batches[single.label]:.1f} texts with 1 worker "
        f"× {threads} threads, {server_batches[default.label]:.1f} with {default.workers} workers (requests of every worker batch together).",
        f"What the cores allow: a premium chat request costs {chat_cpu[default.label]:.1f} ms of CPU in all with the default "
        f"workers (web + PostgreSQL + fake provider + wrk's own {chat_wrk[default.label]:.2f} ms; {chat_cpu[single.label]:.1f} ms "
        f"with one worker), so {cores} cores doing nothing else would cap it near {ceiling:,.0f} req/s: {ceiling / one_chat:.2f}× "
        "what one worker reached — the most any number of workers could add here.",
        f"Every request was recorded: {records} inference records of the benchmark tenant, all `ok`, for the "
        f"{answered['chat']} chat and {answered['embed']} embedding answers counted (records also cover requests in flight when a run ended).",
        f"(2) Local: the default serve's model server (whole starter pack loaded) through inference.client.RemotePool "
        "against inference.pool.ModelPool in the benchmark process, built with the same settings "
        "(MODELGATE_MODEL_MEMORY_MB, MODELGATE_BATCHING; MODELGATE_INFERENCE_THREADS threads per model on both sides). "
        f"lid.176: \"{LID_TEXT}\", one call at a time, {LID_ROUNDS} rounds × {LID_CALLS} calls per side, sides alternating "
        "first; p50 is the median of the rounds' p50s, the added p50 the median of the rounds' differences; the answers are "
        f"identical. Both sides include lid.176's batching window (max_wait_ms {lid_wait_ms:g} ms): a lone "
        "call waits it out before its batch runs.",
        f"{EMBEDDING_SLUG}: {EMBED_PROCESSES} caller processes (bench/modeltier_callers.py, like web workers: no models, "
        f"one RemotePool each) × {EMBED_THREADS} threads, against {callers_total} threads on one in-process pool; "
        f"{EMBED_REQUESTS} single-text requests per caller and round, {EMBED_ROUNDS} rounds per side interleaved; texts are docstring "
        "sentences, the same ones on both sides. Throughput: texts of a round over its wall time (the remote round from "
        "the first caller's start to the last one's end). Batch means are the pools' own counts (the server's through "
        f"RemotePool.stats) over the timed rounds: {embedding['model server'].batches} server batches for "
        f"{embedding['model server'].items} texts, {embedding['in process'].batches} in-process batches for "
        f"{embedding['in process'].items}. p50 ms is one request's latency. Ratio {remote_ratio:.2f}× (target ≥ "
        f"{TARGET_REMOTE_THROUGHPUT:g}×: {_verdict(remote_ratio >= TARGET_REMOTE_THROUGHPUT)}).",
        "(3) Memory: psutil's RSS (and PSS, which shares a page between the processes mapping it) of every process of each "
        "serve, first as started, then after RemotePool.load of every enabled local starter-pack model on its model server, "
        "before any load run; the baseline is bench_memory.py's child process run in this run (RSS after loading the "
        f"pack: {baseline['rss_mb']:,.0f} MB, peak {baseline['peak_mb']:,.0f}). The target counts the model server and the "
        "web workers; the gunicorn master and the serve supervisor are listed too (MB):",
        *memory_notes,
        f"Web workers map torch: {'yes' if worker_torch else 'no'} (libtorch_cpu in /proc/<pid>/maps).",
        "(4) CPU ms per request: user + system time (psutil) of each kind of process over a run, divided by the requests "
        "(or texts, calls) it answered; wrk's own CPU (this process's reaped child) is left out of the table and counted "
        "in the ceiling above. web: gunicorn's master and workers; model server: the serve's `manage.py "
        "modelserver`; PostgreSQL: the server processes of the benchmark database (shared ones — WAL writer, checkpointer "
        "— left out); last column: the fake provider for chat and embeddings through the gateway (it is idle for "
        "embeddings), the calling process(es) for the local rows — the benchmark process (holding the model too, "
        "in process) or the two caller processes. The serve supervisors spent "
        + ", ".join(f"{seconds:.1f} s" for seconds in supervisor_cpu.values()) + " of CPU over the whole run.",
        f"Weights prepared before the run in {prepare_seconds:.1f} s (nothing when cached). The machine's {os.cpu_count()} "
        f"cores are shared by wrk, the fake provider, both serves, PostgreSQL and other work: its 1-minute load average "
        f"was {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after. Runtime {runtime / 60:.1f} min.",
        "Sizes: MODELGATE_BENCH_MODELTIER_SECONDS, _ROUNDS, _WARMUP_SECONDS, _CONNECTIONS, _LID_CALLS, _LID_ROUNDS, "
        "_EMBED_PROCESSES, _EMBED_THREADS, _EMBED_REQUESTS, _EMBED_ROUNDS.",
    ]
    return Table(
        title="Model tier — web workers without models in front of one model server",
        columns=["measurement", "configuration", "result", "p50 ms", "ratio", "target",
                 "CPU ms/req: web", "model server", "PostgreSQL", "fake provider / caller"],
        rows=rows,
        notes=notes,
    )
