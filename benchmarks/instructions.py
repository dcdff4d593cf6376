"""Instructions per request of one ``bench_http.py`` variant, counted by valgrind.

Run: ``python benchmarks/instructions.py flask "ours full, library logging"`` (valgrind on
PATH; about 30 s). The variant serves 300 requests in one run and 1,300 in another, both
under ``valgrind --tool=cachegrind --cache-sim=no``; the difference of the two totals over
1,000 is the count per request, without the interpreter's start-up and the imports. A
count moves by a few thousand between runs (the exporter's thread, the garbage
collector), far less than the wall clock on a shared machine: use it to judge a change
of a few hundred nanoseconds, and ``bench_http.py`` for the figures.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNERS = {"flask": "wsgi_runner", "fastapi": "asgi_runner", "django": "wsgi_runner"}


def _serve(framework: str, variant: str, n: int) -> None:
    """The child: build the variant and serve ``n`` requests (standard output to the sink)."""
    sys.path.insert(0, HERE)
    import bench_http

    bench_http._setup_globals()
    built = getattr(bench_http, f"{framework}_variants")()[variant]()
    app, obs = built if isinstance(built, tuple) else (built, None)
    if obs is not None:
        from mestres_observability._current import swap

        swap(obs)
    run = getattr(bench_http, RUNNERS[framework])(app)
    with bench_http._to_sink():
        run(n)


def _count(framework: str, variant: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, os.path.abspath(__file__), "--serve", framework, variant, str(n)],
        capture_output=True, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        _serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if len(sys.argv) != 3 or sys.argv[1] not in RUNNERS:
        raise SystemExit(__doc__)
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions.py: valgrind is not installed")
    framework, variant = sys.argv[1], sys.argv[2]
    low, high = _count(framework, variant, 300), _count(framework, variant, 1300)
    print(f"{framework} / {variant}: {(high - low) / 1000:,.0f} instructions per request")


if __name__ == "__main__":
    main()
