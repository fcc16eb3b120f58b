"""`aeguard fit` refuses bad options before training and never leaves --out empty, private or littered."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aeguard.bundle import remove_stale_staging
from aeguard.cli.main import app
from aeguard.data.catalog import DATASETS, parse_classes
from aeguard.errors import UsageError

runner = CliRunner()


@pytest.mark.parametrize("text", ["-1", "+3", "#8", "²", "٣", "1.0", "sneakers", "Sneaker!", "t shirt"])
def test_class_names_match_exactly_and_numbers_are_ascii_digits(text):
    spec = DATASETS["fashion-mnist"] if text[0].isalpha() else DATASETS["mnist"]
    with pytest.raises(UsageError, match="unknown class"):
        parse_classes(spec, text)


def test_names_match_ignoring_case_and_aliases_still_work():
    fashion = DATASETS["fashion-mnist"]
    assert parse_classes(fashion, "Ankle Boot, SNEAKER") == (7, 9)
    assert parse_classes(fashion, "t-shirt,tshirt,T-Shirt/Top") == (0,)
    assert parse_classes(DATASETS["mnist"], " 3 ,8") == (3, 8)


def test_fit_with_a_bad_class_is_a_usage_error_without_traceback(tmp_path):
    result = runner.invoke(app, ["fit", "--normal", "²", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown class '²'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def folder(tmp_path) -> Path:
    """120 small generated images, a bright disc at varying places: a few epochs learn them in seconds."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:12, :12]
    images = tmp_path / "images"
    images.mkdir()
    for i in range(120):
        cy, cx = rng.uniform(3, 9, size=2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 9) * 255
        Image.fromarray(disc.astype(np.uint8)).save(images / f"{i}.png")
    return images


def fit_args(folder: Path, out: Path) -> list[str]:
    return ["fit", "--data", str(folder), "--model", "dense", "--epochs", "5", "--device", "cpu", "--out", str(out)]


def test_an_unwritable_out_is_refused_before_training(folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, fit_args(folder, blocker / "bundle"))
    assert result.exit_code == 2 and "cannot write in" in result.output, result.output
    assert "training" not in result.output  # refused before any epoch


def test_a_bundle_is_as_readable_as_any_file_under_the_umask(folder, tmp_path):
    old = os.umask(0o022)
    try:
        result = runner.invoke(app, fit_args(folder, tmp_path / "bundle"))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "bundle"
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o755
    for path in bundle.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


SWAP_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from aeguard import bundle
    real = os.replace
    def replace_then_die(a, b):
        real(a, b)
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_die
    bundle.swap_into_place(Path(sys.argv[1]), Path(sys.argv[2]))
""")


def test_a_kill_during_the_final_swap_leaves_a_whole_bundle_at_out(tmp_path):
    out, staging = tmp_path / "bundle", tmp_path / ".bundle.partial-1-x"
    for folder, content in ((out, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "manifest.json").write_text(content)
    result = subprocess.run([sys.executable, "-c", SWAP_AND_DIE, str(staging), str(out)], timeout=60)
    assert result.returncode in (0, -9)  # killed only where the swap took two renames
    assert (out / "manifest.json").read_text() == "new"


def test_staging_folders_of_killed_fits_are_removed(tmp_path):
    out = tmp_path / "bundle"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".bundle.partial-{dead_pid}-abc", tmp_path / f".bundle.old-{dead_pid}"]
    alive = [tmp_path / f".bundle.partial-{os.getpid()}-def", tmp_path / f".other.partial-{dead_pid}-x"]
    for folder in stale + alive:
        folder.mkdir()
    remove_stale_staging(out)
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in alive] == [True, True]  # a running fit's, and another bundle's


def test_fit_passes_augment_to_training_and_records_it(folder, tmp_path):
    out = tmp_path / "bundle"
    result = runner.invoke(app, [*fit_args(folder, out), "--augment", "flip"])
    assert result.exit_code == 0, result.output
    assert "each mirrored at random (--augment flip)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["config"]["augment"] == "flip"


@pytest.mark.parametrize(("options", "ensemble"), [([], 1), (["--ensemble", "2"], 2), (["--model", "dense"], 1)])
def test_fit_data_passes_the_ensemble_to_draem(folder, tmp_path, monkeypatch, options, ensemble):
    """`fit --data` trains one draem unless --ensemble asks for more (draem refused ensembles before)."""
    import aeguard.train.job as job

    seen = {}

    def capture(options, *args, **kwargs):
        seen["config"] = options.config
        raise SystemExit(0)  # stop before training: the configuration is what is checked

    monkeypatch.setattr(job, "run_fit", capture)
    result = runner.invoke(app, ["fit", "--data", str(folder), "--out", str(tmp_path / "b"), *options])
    assert result.exit_code == 0, result.output
    assert seen["config"].ensemble == ensemble
