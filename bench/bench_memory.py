"""Peak memory of one process holding the whole starter pack, measured in a fresh child process."""
from __future__ import annotations

import json
import subprocess
import sys

from harness import ROOT, Table

CHILD = r"""
import json, os, resource, sys, time
sys.path[:0] = [{root!r}, {platform!r}]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
django.setup()
import psutil
from django.conf import settings
from inference.pool import ModelPool
from registry.models import ModelSpec
from registry.services import ensure_prepared

process = psutil.Process()
baseline = process.memory_info().rss / 2**20
pool = ModelPool(memory_budget_mb=64 * 1024)
rows = []
for spec in ModelSpec.objects.filter(enabled=True, tier="local").order_by("slug"):
    ensure_prepared(spec)
    before = process.memory_info().rss / 2**20
    started = time.perf_counter()
    pool.get(spec.to_config())
    rows.append([spec.slug, round(time.perf_counter() - started, 2), round(process.memory_info().rss / 2**20 - before, 1)])
print(json.dumps({{
    "baseline_mb": round(baseline, 1),
    "rss_mb": round(process.memory_info().rss / 2**20, 1),
    "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "rows": rows,
}}))
"""


def run() -> Table:
    from registry.services import register_starter_pack

    register_starter_pack()
    from django.conf import settings
    from django.db import connection

    # The child reads the same (benchmark) database through DATABASE_URL.
    db = settings.DATABASES["default"]
    url = f"postgresql://{db['USER']}@{db['HOST'].replace('/', '%2F')}:{db['PORT']}/{connection.settings_dict['NAME']}"
    code = CHILD.format(root=str(ROOT), platform=str(ROOT / "platform"))
    env = {"DATABASE_URL": url, "MODELGATE_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    if output.returncode != 0:
        raise RuntimeError(output.stderr[-3000:])
    result = json.loads(output.stdout.strip().splitlines()[-1])
    rows = [[slug, seconds, delta] for slug, seconds, delta in result["rows"]]
    rows.append(["(Python + Django before any model)", "", result["baseline_mb"]])
    rows.append(["whole starter pack: RSS now / peak", "", f"{result['rss_mb']} / {result['peak_mb']}"])
    return Table(
        title="Memory — one process holding the whole starter pack",
        columns=["model (load order)", "load s", "RSS added MB"],
        rows=rows,
        notes=["A fresh child process loads every enabled local model of the starter pack into one pool (a model loads its dependencies with it, which then show 0); "
               "the first torch-based model also pays for importing torch."],
    )
