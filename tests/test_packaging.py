"""Install metadata: the scoring-only requirement set has no torch and matches the base install."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_names(lines):
    return {line.split(">")[0].split("=")[0].split("[")[0].strip().lower() for line in lines}


def test_scoring_requirements_match_base_install_and_exclude_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [l for l in (ROOT / "deploy/requirements-scoring.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert requirement_names(lines) == requirement_names(project["dependencies"])
    assert "torch" not in requirement_names(lines)
    assert requirement_names(project["optional-dependencies"]["train"]) == {"torch"}
    for extra in ("parquet", "ray", "test"):
        assert "torch" not in requirement_names(project["optional-dependencies"][extra])


def test_cli_installs_under_the_aeguard_namespace():
    import aeguard.cli.main

    assert Path(aeguard.cli.main.__file__).resolve().parent == ROOT / "aeguard" / "cli"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["aeguard"] == "aeguard.cli.main:main"
