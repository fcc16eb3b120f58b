"""Install metadata: the scoring-only requirement set has no torch and matches the base install."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_names(lines):
    return {line.split(">")[0].split("=")[0].split("[")[0].strip().lower() for line in lines}


def test_scoring_requirements_match_base_install_and_exclude_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [
        line
        for line in (ROOT / "deploy/requirements-scoring.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert requirement_names(lines) == requirement_names(project["dependencies"])
    assert not requirement_names(lines) & {"torch", "onnx", "scikit-learn", "scipy", "matplotlib"}
    assert {"torch", "onnx"} <= requirement_names(project["optional-dependencies"]["train"])
    assert requirement_names(project["optional-dependencies"]["report"]) == {"scikit-learn", "scipy", "matplotlib"}
    for extra in ("parquet", "ray", "test", "report"):
        assert "torch" not in requirement_names(project["optional-dependencies"][extra])


def test_cli_installs_under_the_aeguard_namespace():
    import aeguard.cli.main

    assert Path(aeguard.cli.main.__file__).resolve().parent == ROOT / "aeguard" / "cli"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["aeguard"] == "aeguard.cli.main:main"


def test_one_version_everywhere(tmp_path):
    """pip's metadata, aeguard --version, manifests and /v2 all report aeguard.__version__."""
    from importlib.metadata import version

    from typer.testing import CliRunner

    import aeguard
    from aeguard.cli.main import app
    from aeguard.serve.openapi import openapi_document

    assert version("aeguard") == aeguard.__version__
    assert CliRunner().invoke(app, ["--version"]).output.strip() == f"aeguard {aeguard.__version__}"
    assert openapi_document()["info"]["version"] == aeguard.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "aeguard.__version__"}
