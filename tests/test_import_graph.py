"""The package's shape: no import cycles, and the scoring side never loads the training or plotting stacks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aeguard"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Every aeguard module `name` imports, at module level or inside a function (both can close a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # "from aeguard.report import plots" imports the module aeguard.report.plots
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    return found


def test_no_import_cycles_inside_the_package():
    known = modules()
    graph = {name: imported(name, path, set(known)) for name, path in known.items()}
    # a package's __init__ is imported by each of its modules; importing it back is not a cycle of code
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target) :] + [target] if target in trail else [node, target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_scoring_batch_and_serve_load_neither_torch_nor_matplotlib_nor_onnx():
    names = sorted(
        name
        for name in modules()
        if name.split(".")[1:2] in (["scoring"], ["batch"], ["serve"]) and name != "aeguard.batch.ray_engine"
    )  # Ray is an extra with its own stack
    script = (
        "import sys, importlib\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print('HEAVY', sorted(m for m in ('torch', 'matplotlib', 'onnx', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_importing_data_leaves_pillows_decompression_guard_alone():
    script = (
        "import PIL.Image as I; before = I.MAX_IMAGE_PIXELS; import aeguard.data.images; "
        "print(I.MAX_IMAGE_PIXELS == before)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


def test_importing_the_report_leaves_matplotlibs_backend_alone():
    script = (
        "import matplotlib; matplotlib.use('svg'); import aeguard.report.plots, aeguard.report.evaluate; "
        "print(matplotlib.get_backend())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "svg", done.stderr
