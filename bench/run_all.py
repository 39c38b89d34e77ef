"""Run every bench/*_bench.py in turn and print what each prints (`make bench`).

Each script is a separate process with its own time limit; one that fails or runs out of time is
reported and the others still run. Exit status: 0 when every script exited 0, else 1.
Pass names to run some only: `python bench/run_all.py webhook api`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# Each benchmark bounds itself (the webhook bench stays under 3 minutes); this is the backstop.
SCRIPT_TIMEOUT_S = int(os.environ.get("BENCH_SCRIPT_TIMEOUT", "600"))


def scripts(names: list[str]) -> list[Path]:
    """The benchmark scripts present, sorted; only those named when names are given."""
    found = sorted(BENCH_DIR.glob("*_bench.py"))
    if names:
        found = [p for p in found if p.stem.removesuffix("_bench") in names or p.name in names]
    return found


def run(script: Path) -> tuple[int | None, float]:
    """Run one script with its output passed through; its exit status (None: timed out) and seconds."""
    start = time.monotonic()
    # Its own session, so a timeout can end it and whatever it started in its group.
    proc = subprocess.Popen([sys.executable, str(script)], cwd=str(ROOT), start_new_session=True)
    try:
        code: int | None = proc.wait(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the scripts stop their own children on it.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        code = None
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    return code, time.monotonic() - start


def main(argv: list[str]) -> int:
    """Run the benchmarks; a summary line per script at the end."""
    found = scripts(argv)
    if not found:
        print("no bench/*_bench.py scripts found" + (f" matching {argv}" if argv else ""))
        return 1
    summary = []
    for script in found:
        print(f"=== {script.name} " + "=" * max(0, 70 - len(script.name)), flush=True)
        code, seconds = run(script)
        state = "ok" if code == 0 else ("TIMED OUT" if code is None else f"exit {code}")
        summary.append((script.name, state, seconds))
        print(flush=True)
    print("=== summary " + "=" * 66)
    for name, state, seconds in summary:
        print(f"{name:<40} {state:<12} {seconds:6.1f} s")
    return 0 if all(state == "ok" for _, state, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
