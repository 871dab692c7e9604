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

from harness import ROOT, bench_database, bench_database_name, setup_django  # noqa: E402


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
    output = ROOT / "BENCHMARKS.md"
    with bench_database(bench_database_name(names)):
        for name in names:
            print(f"== {name}", flush=True)
            table = importlib.import_module(f"bench_{name}").run()
            table.command = f"make bench BENCH={name}"  # what reproduces this section, whatever ran it
            print(table.markdown(), flush=True)
            stamp = f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine()}."
            # Read afresh: a run side by side (another database) may have written its section meanwhile.
            sections = read_sections(output)
            sections[name] = f"{stamp}\n\n{table.markdown()}"
            write_sections(output, sections)  # after each one: a later failure keeps earlier results
    print(f"Wrote {output.relative_to(ROOT)}")
    return 0


MARKER = "<!-- bench:{} -->"


def read_sections(path: Path) -> dict[str, str]:
    """The benchmarks' sections as last written, so that running one keeps the others' numbers."""
    if not path.exists():
        return {}
    sections, name, lines = {}, None, []
    for line in path.read_text().splitlines():
        if line.startswith("<!-- bench:") and line.endswith(" -->"):
            if name:
                sections[name] = "\n".join(lines).strip()
            name, lines = line.removeprefix("<!-- bench:").removesuffix(" -->"), []
        elif name:
            lines.append(line)
    if name:
        sections[name] = "\n".join(lines).strip()
    return sections


def write_sections(path: Path, sections: dict[str, str]) -> None:
    header = [
        "# Benchmarks",
        "",
        "Numbers are medians of repeated runs; every comparison is measured side by side in one run.",
        "`make bench` runs them all; `make bench BENCH=<name>` one of them.",
        "",
    ]
    body = [f"{MARKER.format(name)}\n{sections[name]}\n" for name in sorted(sections)]
    path.write_text("\n".join(header + body))


if __name__ == "__main__":
    sys.exit(main())
