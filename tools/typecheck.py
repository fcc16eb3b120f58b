"""mypy over the package against a baseline that may only shrink.

The baseline (tools/mypy-baseline.txt) holds the number of mypy errors per file when type checking was
introduced. A run fails when any file has more errors than its baseline line says, or a new file has any;
it says so when a file has fewer, so the baseline can be lowered in the same change (--update writes it).

    python tools/typecheck.py [--update]
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tools" / "mypy-baseline.txt"
ERROR = re.compile(r"^(?P<file>[^:]+\.py):\d+: error:")


def current_errors() -> tuple[collections.Counter, str]:
    done = subprocess.run([sys.executable, "-m", "mypy", "aeguard"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1) or "error: Cannot find" in done.stderr:
        raise SystemExit(f"mypy did not run: {done.stderr or done.stdout}")
    counts = collections.Counter(m["file"] for line in done.stdout.splitlines() if (m := ERROR.match(line)))
    return counts, done.stdout


def read_baseline() -> dict[str, int]:
    entries = {}
    for line in BASELINE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            count, name = line.split(maxsplit=1)
            entries[name] = int(count)
    return entries


def main() -> int:
    counts, report = current_errors()
    if "--update" in sys.argv:
        lines = [f"{n} {name}" for name, n in sorted(counts.items())]
        BASELINE.write_text(
            "# mypy errors per file allowed (python tools/typecheck.py --update); only ever lower\n"
            + "\n".join(lines)
            + "\n"
        )
        print(f"baseline written: {sum(counts.values())} errors in {len(counts)} files")
        return 0
    baseline = read_baseline()
    grown = {name: n for name, n in counts.items() if n > baseline.get(name, 0)}
    shrunk = {name: n for name, n in baseline.items() if counts.get(name, 0) < n}
    if grown:
        print(report)
        for name, n in sorted(grown.items()):
            print(f"typecheck: {name} has {n} mypy errors, its baseline allows {baseline.get(name, 0)}")
        return 1
    for name, n in sorted(shrunk.items()):
        print(f"typecheck: {name} is down to {counts.get(name, 0)} from {n}: lower tools/mypy-baseline.txt")
    print(f"typecheck: {sum(counts.values())} mypy errors, none over the baseline of {sum(baseline.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
