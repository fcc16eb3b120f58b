"""The front door stays short and every link in it and in the docs resolves, anchors included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / "CHANGELOG.md",
    ROOT / "benchmarks" / "README.md",
    ROOT / "deploy" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's (and MkDocs') heading slugs: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slugs.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return slugs


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: outside the repository
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == []


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:2] == ["## Install", "## The two commands"]  # what it is, then how to start


def test_the_docs_python_example_is_the_tested_one():
    def example(page: Path) -> str:
        match = re.search(r"<!-- tested by tests/test_api.py -->\n```python\n(.*?)```", page.read_text(), re.S)
        assert match, page
        return match.group(1)

    assert example(ROOT / "docs" / "python.md") == example(ROOT / "README.md")


def cli_examples() -> list[tuple[str, list[str]]]:
    """Every `aeguard COMMAND ...` line inside a code block of the README and the docs."""
    import shlex

    found = []
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("aeguard "):
                    found.append((str(page.relative_to(ROOT)), shlex.split(line.replace("\\", ""))[1:]))
    return found


def test_every_cli_example_in_the_docs_names_real_commands_and_flags():
    import typer

    from aeguard.cli.main import app

    commands = {
        name: {flag for param in command.params for flag in param.opts}
        for name, command in typer.main.get_command(app).commands.items()
    }
    examples = cli_examples()
    assert len(examples) > 10
    wrong = []
    for page, words in examples:
        if not words or words[0].startswith("-"):
            continue  # aeguard --version / --help
        if words[0] not in commands:
            wrong.append(f"{page}: no command {words[0]!r}")
            continue
        flags = {word.split("=")[0] for word in words[1:] if word.startswith("--")}
        wrong += [f"{page}: aeguard {words[0]} has no {flag}" for flag in flags - commands[words[0]] - {"--help"}]
    assert wrong == []


def test_every_options_help_reaches_the_terminal_whole():
    """Option help says its default in brackets ("[default: BUNDLE/report]"); rendered as Rich markup, those were
    taken for tags and dropped from `--help`."""
    import typer
    from typer.testing import CliRunner

    from aeguard.cli.main import app

    bracketed = 0
    for name, command in typer.main.get_command(app).commands.items():
        shown = " ".join(CliRunner().invoke(app, [name, "--help"], terminal_width=200).output.split())
        for param in command.params:
            text = " ".join((getattr(param, "help", None) or "").split())
            bracketed += "[" in text
            assert text in shown, f"aeguard {name} --help lost part of {param.opts[0]}'s help: {text!r}"
    assert bracketed > 10
