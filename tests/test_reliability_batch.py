"""`aeguard score` against hostile inputs and a failing machine: every input gets one row, every failure one line."""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aeguard.cli.main import app
from aeguard.data import images as image_module
from aeguard.data.contract import Preprocessing
from aeguard.data.images import iter_image_paths, load_image
from aeguard.errors import ImageError
from tests.bundles import tiny_bundle

runner = CliRunner()
AEGUARD = Path(sys.executable).parent / "aeguard"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def png(path: Path, value: int = 100) -> Path:
    Image.new("L", (28, 28), value).save(path)
    return path


def score(*args: str, input: str | None = None):
    return runner.invoke(app, ["score", *map(str, args)], input=input)


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    "error",
    [
        TypeError("odd tag"),
        RuntimeError("codec"),
        NotImplementedError("mode"),
        AttributeError("plugin"),
        IndexError("table"),
        KeyError("tag"),
    ],
)
def test_any_exception_of_a_decoder_is_that_images_error(monkeypatch, tmp_path, error):
    path = png(tmp_path / "a.png")

    class Broken:
        width = height = 28

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def load(self):
            raise error

    monkeypatch.setattr(image_module.Image, "open", lambda *args, **kwargs: Broken())
    with pytest.raises(ImageError, match=f"a.png: cannot decode image \\({type(error).__name__}"):
        load_image(path, Preprocessing(1, 28, 28))


def test_the_decode_worker_turns_any_failure_into_an_error_string(monkeypatch):
    from aeguard.batch import decoding

    def explode(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(decoding, "load_images", explode)
    assert decoding.decode_chunk(["x.png"], Preprocessing(1, 28, 28), 100) == [
        "x.png: cannot read (RuntimeError: boom)"
    ]


def test_paths_the_os_refuses_get_rows_and_the_run_goes_on(bundle, tmp_path):
    good = png(tmp_path / "good.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    listing = tmp_path / "list.txt"
    entries = [
        str(good),
        str(tmp_path / "loop.png"),
        f"{good}/inside.png",
        str(tmp_path / ("x" * 300 + ".png")),
        f"{tmp_path}/nul\0byte.png",
    ]
    listing.write_text("\n".join(entries) + "\n")
    out = tmp_path / "out.csv"
    result = score(bundle, "--from-list", listing, "--output", out)
    assert result.exit_code == 3, result.output
    assert_no_traceback(result)
    found = rows(out)
    assert [row["path"] for row in found] == entries
    reasons = [row["error"] for row in found]
    assert reasons[0] == "" and found[0]["score"]
    assert "too many levels of symbolic links" in reasons[1]
    assert "not a directory" in reasons[2]
    assert "file name too long" in reasons[3]
    assert "NUL byte" in reasons[4]


def test_an_unreadable_subfolder_is_reported_not_dropped(monkeypatch, tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "locked").mkdir()
    png(tmp_path / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without read permission does (root would read it anyway)
        if Path(path) == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", lambda path: scandir(path) and [])
    found = list(iter_image_paths([tmp_path]))
    assert found == [tmp_path / "a.png", tmp_path / "locked"]
    with pytest.raises(ImageError, match="locked: folder cannot be listed \\(permission denied\\)"):
        load_image(tmp_path / "locked", Preprocessing(1, 28, 28))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_file_name_that_is_not_utf8_is_scored_in_every_format_and_resumed(bundle, tmp_path, fmt):
    folder = tmp_path / "in"
    folder.mkdir()
    png(folder / "plain.png")
    odd = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9.png")  # Latin-1 bytes, not UTF-8
    png(Path(odd))
    out = tmp_path / f"out.{fmt}"
    first = score(bundle, folder, "--output", out)
    assert first.exit_code == 0, first.output
    if fmt == "csv":
        names = [row["path"] for row in rows(out)]
    elif fmt == "jsonl":
        names = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    else:
        import pyarrow.parquet as pq

        names = pq.read_table(out).column("path").to_pylist()
    assert sorted(names) == sorted([str(folder / "plain.png"), f"{folder}/caf\\xe9.png"])
    if fmt != "parquet":
        again = score(bundle, folder, "--output", out, "--resume")
        assert again.exit_code == 0 and "2 already done" in again.output, again.output


def test_resume_after_a_cut_inside_a_quoted_path_with_a_newline_loses_nothing(bundle, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "line\nbreak.png", "z.png"):
        png(folder / name)
    whole = tmp_path / "whole.csv"
    assert score(bundle, folder, "--output", whole).exit_code == 0
    data = whole.read_bytes()
    cut = tmp_path / "cut.csv"
    cut.write_bytes(data[: data.index(b"line\n") + 5])  # a crash right after the newline inside the quotes
    result = score(bundle, folder, "--output", cut, "--resume")
    assert result.exit_code == 0, result.output
    assert rows(cut) == rows(whole)


def test_resume_onto_a_csv_cut_inside_its_header_writes_the_header(bundle, tmp_path):
    png(tmp_path / "a.png")
    out = tmp_path / "out.csv"
    out.write_text("path,sco")
    result = score(bundle, tmp_path / "a.png", "--output", out, "--resume")
    assert result.exit_code == 0, result.output
    assert [row["path"] for row in rows(out)] == [str(tmp_path / "a.png")]


def test_duplicates_in_a_list_give_the_same_rows_resumed_or_not(bundle, tmp_path):
    a, b = png(tmp_path / "a.png"), png(tmp_path / "b.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{a}\n{b}\n{a}\n{a}\n")
    whole, part = tmp_path / "whole.csv", tmp_path / "part.csv"
    assert score(bundle, "--from-list", listing, "--output", whole).exit_code == 0
    lines = whole.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]))  # header + a + b: interrupted after two rows
    assert score(bundle, "--from-list", listing, "--output", part, "--resume").exit_code == 0
    assert [r["path"] for r in rows(part)] == [r["path"] for r in rows(whole)] == [str(a), str(b), str(a), str(a)]


def test_damaged_output_is_refused_with_one_line(bundle, tmp_path):
    png(tmp_path / "a.png")
    out = tmp_path / "out.csv"
    out.write_text("path,score,threshold,is_anomaly,error\nshort,row\nx.png,0.1,0.2,false,\n")
    result = score(bundle, tmp_path / "a.png", "--output", out, "--resume")
    assert result.exit_code == 2 and "is damaged at line" in result.output
    assert_no_traceback(result)


def write_float_tiff(path: Path, value: float) -> Path:
    pixels = np.full((28, 28), 0.4, np.float32)
    pixels[5, 5] = value
    Image.fromarray(pixels, mode="F").save(path, format="TIFF")
    return path


def test_nan_pixels_are_an_error_row_never_a_normal_verdict(bundle, tmp_path):
    nan = write_float_tiff(tmp_path / "nan.tif", np.nan)
    out = tmp_path / "out.jsonl"
    result = score(bundle, nan, png(tmp_path / "a.png", 250), "--output", out, "--fail-on-anomaly")
    assert result.exit_code == 10, result.output  # the bright PNG is an anomaly; the NaN file is no verdict
    lines = out.read_text().splitlines()
    first = json.loads(lines[0], parse_constant=lambda name: pytest.fail(f"bare {name} in JSON Lines"))
    assert first["score"] is None and first["is_anomaly"] is None and "non-finite" in first["error"]


def test_a_bundle_whose_graph_scores_nan_is_refused_or_its_nan_scores_are_errors(tmp_path):
    broken = tiny_bundle(tmp_path / "nan", kind="nan_when_bright", threshold=1.0)
    out = tmp_path / "out.csv"
    result = score(broken, png(tmp_path / "bright.png", 255), png(tmp_path / "dark.png", 0), "--output", out)
    assert result.exit_code == 3, result.output
    bright, dark = rows(out)
    assert bright["is_anomaly"] == "" and "non-finite score" in bright["error"]
    assert dark["error"] == "" and dark["is_anomaly"] == "false"
    # a graph that is NaN even for a blank image is refused when it loads, by score and evaluate alike
    always = tiny_bundle(tmp_path / "always", kind="nan_always")
    for command in (
        ["score", str(always), str(tmp_path / "dark.png")],
        ["evaluate", str(always), "--data", str(tmp_path)],
    ):
        refused = runner.invoke(app, command)
        assert refused.exit_code == 4 and "no finite score for a blank image" in refused.output, refused.output


@pytest.mark.parametrize(
    "target, words",
    [
        ("folder", "it is a folder"),
        ("missing/out.csv", "its folder does not exist"),
    ],
)
def test_an_output_that_cannot_be_written_is_one_line_and_exit_7(bundle, tmp_path, target, words):
    png(tmp_path / "a.png")
    (tmp_path / "folder").mkdir()
    result = score(bundle, tmp_path / "a.png", "--output", tmp_path / target)
    assert result.exit_code == 7 and words in result.output, result.output
    assert_no_traceback(result)


def test_a_full_disk_is_one_line_and_exit_7(bundle, tmp_path):
    png(tmp_path / "a.png")
    result = subprocess.run(
        [str(AEGUARD), "score", str(bundle), str(tmp_path / "a.png"), "--output", "/dev/full"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 7 and "the disk is full" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_size_limit_keeps_the_rows_before_it_and_exits_7(bundle, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(300):
        png(folder / f"{i:03d}_{'x' * 40}.png")
    out = tmp_path / "out.csv"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    result = subprocess.run(
        [str(AEGUARD), "score", str(bundle), str(folder), "--output", str(out), "--batch-size", "16"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert result.returncode == 7 and "file-size limit" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert 0 < len(rows(out)) < 300  # what fitted; the last row may be cut off at the limit
    resumed = subprocess.run(
        [str(AEGUARD), "score", str(bundle), str(folder), "--output", str(out), "--resume"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = rows(out)
    assert sorted(row["path"] for row in final) == sorted(str(p) for p in folder.iterdir())
    assert all(row["score"] and row["is_anomaly"] == "false" for row in final)  # the cut row was scored again


def test_scoring_from_inside_a_source_checkout_uses_the_installed_aeguard(bundle, tmp_path):
    """The working directory holds a different `aeguard` package (as a source checkout does)."""
    (tmp_path / "aeguard").mkdir()
    (tmp_path / "aeguard" / "__init__.py").write_text("raise ImportError('the checkout, not the install')\n")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        png(images / f"{i}.png")
    result = subprocess.run(
        [str(AEGUARD), "score", str(bundle), str(images)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "scored 3 images" in result.stderr and "0 unreadable" in result.stderr


def test_heat_map_names_of_long_paths_stay_within_the_file_system_limit():
    from aeguard.batch.heatmaps import map_name

    long_a, long_b = "/data/" + "a" * 600 + "/x.png", "/data/" + "b" * 600 + "/x.png"
    assert len(map_name(long_a)) <= 255 and map_name(long_a) != map_name(long_b)
    assert map_name(long_a).endswith("_x.png.png") and map_name("/data/cat.png") == "data_cat.png.png"


def test_a_report_folder_that_cannot_be_written_is_one_line_and_exit_1(bundle, tmp_path):
    for part, value in (("normal", 100), ("anomaly", 250)):
        (tmp_path / part).mkdir()
        png(tmp_path / part / "a.png", value)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    result = runner.invoke(app, ["evaluate", str(bundle), "--data", str(tmp_path), "--report-dir", str(blocker / "r")])
    assert result.exit_code == 1 and "aeguard: error:" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
