"""Instructions per request of one ``bench_http.py`` variant, counted by valgrind.

Run: ``python benchmarks/instructions.py flask "ours full, library logging" [--misses]
[--freeze-gc]`` (valgrind on PATH; about 30 s, a few minutes with ``--misses``). The
variant serves 300 requests in one run and 1,300 in another, both under ``valgrind
--tool=cachegrind``; the difference of the two totals over 1,000 is the count per
request, without the interpreter's start-up and the imports. A count moves by a few
thousand between runs (the exporter's thread, the garbage collector), far less than the
wall clock on a shared machine: use it to judge a change of a few hundred nanoseconds,
and ``bench_http.py`` for the figures.

``--misses`` also simulates the caches (``--cache-sim=yes``, the host's L1 sizes) and
prints the first-level instruction and data cache misses per request: on this project's
machines their ratios follow the wall-clock ratios far more closely than the instruction
counts do (see docs/benchmarks.md, "The metrics-only floor, and why the pass's time
follows its cache misses").
``--freeze-gc`` moves the objects alive once the variant is built out of the garbage
collector's reach (``gc.freeze()``), so that a larger heap (a process that imported more)
does not make the full collections of some variants dearer than others'.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNERS = {"flask": "wsgi_runner", "fastapi": "asgi_runner", "django": "wsgi_runner"}


def _serve(framework: str, variant: str, n: int, freeze: bool) -> None:
    """The child: build the variant and serve ``n`` requests (standard output to the sink)."""
    sys.path.insert(0, HERE)
    import bench_http

    bench_http._setup_globals()
    run = getattr(bench_http, RUNNERS[framework])(bench_http.serving(framework, variant))
    if freeze:
        gc.freeze()
    with bench_http._to_sink():
        run(n)


#: the totals valgrind prints: instructions, and with the cache simulation the first-level
#: instruction misses and data misses (reads + writes)
_TOTALS = {"instructions": r"I\s+refs:\s+([\d,]+)", "I1 misses": r"I1\s+misses:\s+([\d,]+)",
           "D1 misses": r"D1\s+misses:\s+([\d,]+)"}


def _count(framework: str, variant: str, n: int, misses: bool, freeze: bool
           ) -> dict[str, int]:
    command = ["valgrind", "--tool=cachegrind", f"--cache-sim={'yes' if misses else 'no'}",
               "--cachegrind-out-file=/dev/null", sys.executable, os.path.abspath(__file__),
               "--serve", framework, variant, str(n)]
    if freeze:
        command.append("--freeze-gc")
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    totals = {}
    for name, pattern in _TOTALS.items():
        if name != "instructions" and not misses:
            continue
        found = re.search(pattern, out.stderr)
        if found is None:
            raise SystemExit(f"no {name} in valgrind's output:\n{out.stderr[-2000:]}")
        totals[name] = int(found.group(1).replace(",", ""))
    return totals


def main() -> None:
    args = sys.argv[1:]
    freeze = "--freeze-gc" in args
    misses = "--misses" in args
    args = [a for a in args if a not in ("--freeze-gc", "--misses")]
    if len(args) == 4 and args[0] == "--serve":
        _serve(args[1], args[2], int(args[3]), freeze)
        return
    if len(args) != 2 or args[0] not in RUNNERS:
        raise SystemExit(__doc__)
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions.py: valgrind is not installed")
    framework, variant = args
    low = _count(framework, variant, 300, misses, freeze)
    high = _count(framework, variant, 1300, misses, freeze)
    figures = ", ".join(f"{(high[k] - low[k]) / 1000:,.0f} {k}" for k in high)
    print(f"{framework} / {variant}: {figures} per request")


if __name__ == "__main__":
    main()
