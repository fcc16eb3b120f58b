"""Build the documentation site: the repository's files in their own layout under build/docs-src, then
`mkdocs build --strict` (configured in mkdocs.yml).

Copying the tracked files keeps every relative link of the Markdown (README.md -> docs/usage.md,
docs/measured.md -> ../benchmarks/results/...) valid on the site exactly as in the repository, so one
set of links serves both, and the strict build checks them all.

    python tools/build_docs.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "build" / "docs-src"


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def main() -> int:
    shutil.rmtree(SOURCE, ignore_errors=True)
    for name in tracked_files():
        if name.startswith(("tests/", ".")) or name.endswith((".py", ".json", ".yml", ".yaml", ".toml")):
            continue  # sources are read by mkdocstrings from the repository itself
        target = SOURCE / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")], cwd=ROOT
    ).returncode


if __name__ == "__main__":
    raise SystemExit(main())
