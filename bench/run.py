"""Run the benchmarks (bench/bench_*.py), print each table and collect them into BENCHMARKS.md.

`make bench` runs all of them; `make bench BENCH=auth` only bench_auth.py.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import ROOT, bench_database, setup_django  # noqa: E402


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark names (bench_<name>.py); all when omitted")
    args = parser.parse_args()
    available = sorted(path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))
    names = args.names or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown benchmarks {', '.join(unknown)}; available: {', '.join(available)}")
    if not names:
        print("No benchmarks in bench/.")
        return 1

    setup_django()
    sections = []
    with bench_database():
        for name in names:
            print(f"== {name}", flush=True)
            table = importlib.import_module(f"bench_{name}").run()
            print(table.markdown(), flush=True)
            sections.append(table.markdown())

    output = ROOT / "BENCHMARKS.md"
    header = [
        "# Benchmarks",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        "Numbers are medians of repeated runs; comparisons are measured side by side in one run.",
        "",
    ]
    output.write_text("\n".join(header + sections))
    print(f"Wrote {output.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
