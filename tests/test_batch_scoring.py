"""`aeguard score` at scale: broken-file corpus, path lists, formats, heat maps, exit codes, resume, Ray."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aeguard.cli.main import app
from aeguard.data.catalog import load_split
from aeguard.data.contract import Preprocessing
from aeguard.data.splits import to_model_input
from aeguard.scoring.scorer import Scorer

runner = CliRunner()


@pytest.fixture(scope="module")
def pngs(data_dir, tmp_path_factory):
    """60 real MNIST test images as PNG files."""
    folder = tmp_path_factory.mktemp("pngs")
    test = load_split("mnist", "test", data_dir)
    for i in range(60):
        Image.fromarray(test.images[i]).save(folder / f"{i:03d}_{test.labels[i]}.png")
    return folder


def broken_corpus(folder):
    """Every kind of bad input the scorer must survive, with the reason it should give."""
    folder.mkdir()
    good = Image.fromarray((np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28))
    good.save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    truncated = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    Image.new("L", (2000, 1500)).save(folder / "bomb.png")  # 3 MP, tiny on disk
    (folder / "dangling.png").symlink_to(folder / "missing-target.png")

    # a PNG whose header claims a 100k x 100k canvas: refused from the header, nothing decoded
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = (100_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    (folder / "huge_header.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return {
        "empty.png": "empty file",
        "text.jpg": "not a recognised image",
        "truncated.png": "cannot decode",
        "bomb.png": "pixel limit",
        "dangling.png": "no such file",
        "huge_header.png": "pixel limit",
    }


def decode_workers() -> set[int]:
    """PIDs of live forkserver processes and their workers (the decode pools' processes)."""
    pids = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if b"multiprocessing.forkserver" in handle.read():
                    pids.add(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def read_csv(path):
    return list(csv.DictReader(path.open()))


def test_broken_corpus_gets_one_row_each_and_the_run_goes_on(mnist_bundle, tmp_path):
    reasons = broken_corpus(tmp_path / "corpus")
    out = tmp_path / "scores.csv"
    result = runner.invoke(
        app, ["score", str(mnist_bundle), str(tmp_path / "corpus"), "-o", str(out), "--max-pixels", "1000000"]
    )
    assert result.exit_code == 3, result.output
    rows = {os.path.basename(r["path"]): r for r in read_csv(out)}
    assert set(rows) == set(reasons) | {"good.png"}
    for name, reason in reasons.items():
        assert reason in rows[name]["error"] and rows[name]["score"] == "", (name, rows[name])
    assert rows["good.png"]["error"] == "" and float(rows["good.png"]["score"]) > 0
    assert "6 unreadable" in result.stderr and "scored 1 images" in result.stderr


def test_from_list_file_and_stdin(mnist_bundle, pngs, tmp_path):
    names = sorted(pngs.iterdir())[:10]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in names) + "\n\n" + str(tmp_path / "gone.png") + "\n")
    out = tmp_path / "a.csv"
    result = runner.invoke(app, ["score", str(mnist_bundle), "--from-list", str(listing), "-o", str(out)])
    assert result.exit_code == 3  # the missing listed file
    rows = read_csv(out)
    assert [r["path"] for r in rows] == [str(p) for p in names] + [str(tmp_path / "gone.png")]
    assert "no such file" in rows[-1]["error"]
    out_stdin = tmp_path / "b.csv"
    result = runner.invoke(
        app,
        ["score", str(mnist_bundle), "--from-list", "-", "-o", str(out_stdin)],
        input="\n".join(str(p) for p in names) + "\n",
    )
    assert result.exit_code == 0, result.output
    assert [r["score"] for r in read_csv(out_stdin)] == [r["score"] for r in rows[:-1]]


def test_jsonl_and_parquet_hold_the_same_rows_as_csv(mnist_bundle, pngs, tmp_path):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    outputs = {fmt: tmp_path / f"s.{fmt}" for fmt in ("csv", "jsonl", "parquet")}
    for path in outputs.values():
        assert runner.invoke(app, ["score", str(mnist_bundle), str(pngs), "-o", str(path)]).exit_code == 0
    expected = read_csv(outputs["csv"])
    as_json = [json.loads(line) for line in outputs["jsonl"].read_text().splitlines()]
    table = pyarrow_parquet.read_table(outputs["parquet"]).to_pylist()
    assert not (tmp_path / "s.parquet.partial.jsonl").exists()
    for rows in (as_json, table):
        assert [r["path"] for r in rows] == [r["path"] for r in expected]
        np.testing.assert_allclose([r["score"] for r in rows], [float(r["score"]) for r in expected], rtol=1e-6)
        assert [r["is_anomaly"] for r in rows] == [r["is_anomaly"] == "true" for r in expected]


def test_parquet_to_standard_output_is_refused_by_the_cli_and_the_writer(mnist_bundle, pngs):
    from aeguard.batch.writers import RowWriter
    from aeguard.errors import UsageError

    result = runner.invoke(app, ["score", str(mnist_bundle), str(pngs), "--format", "parquet"])
    assert result.exit_code == 2 and "Parquet output needs --output FILE" in result.output, result.output
    with pytest.raises(UsageError, match="Parquet output needs --output FILE"):
        RowWriter(None, "parquet")  # the library caller gets the same words, not an AttributeError


def test_heat_maps_for_anomalies_only(mnist_bundle, pngs, tmp_path):
    maps = tmp_path / "maps"
    out = tmp_path / "s.csv"
    result = runner.invoke(
        app, ["score", str(mnist_bundle), str(pngs), "-o", str(out), "--save-maps", str(maps), "--fail-on-anomaly"]
    )
    rows = read_csv(out)
    anomalies = [r for r in rows if r["is_anomaly"] == "true"]
    assert anomalies and result.exit_code == 10
    written = sorted(maps.iterdir())
    assert len(written) == len(anomalies)
    image = Image.open(written[0])
    assert image.mode == "RGB" and image.size == (28, 28)
    normals = [pngs / os.path.basename(r["path"]) for r in rows if r["is_anomaly"] == "false"]
    result = runner.invoke(app, ["score", str(mnist_bundle), *map(str, normals), "--fail-on-anomaly"])
    assert result.exit_code == 0


def test_progress_bar_stays_out_of_pipes(mnist_bundle, pngs):
    result = runner.invoke(app, ["score", str(mnist_bundle), str(pngs)])
    assert result.exit_code == 0
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("scored 60 images")
    assert result.stdout.count("\n") == 61  # header + one row per image, on stdout


def test_killed_run_resumed_ends_with_every_input_exactly_once(mnist_bundle, pngs, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    sources = sorted(pngs.iterdir())
    for i in range(12_000):  # unique paths, cheap to make: symlinks to the 60 real images
        (links / f"{i:05d}.png").symlink_to(sources[i % len(sources)])
    out = tmp_path / "scores.jsonl"
    command = [
        sys.executable,
        "-m",
        "aeguard.cli.main",
        "score",
        str(mnist_bundle),
        str(links),
        "-o",
        str(out),
        "--batch-size",
        "16",
        "--workers",
        "1",
        "--threads",
        "1",
    ]
    before = decode_workers()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 1000):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines_at_kill = out.read_bytes().count(b"\n")
    assert 1000 <= lines_at_kill < 12_000, "the run was not caught midway"
    deadline = time.monotonic() + 20  # the killed run's decode workers and forkserver follow it
    while decode_workers() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not decode_workers() - before, "decode processes outlived the killed run"
    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    paths = [r["path"] for r in rows]
    assert len(paths) == 12_000 and len(set(paths)) == 12_000
    assert set(paths) == {str(p) for p in links.iterdir()}
    by_source = {str(links / f"{i:05d}.png"): i % len(sources) for i in range(12_000)}
    expected = (
        Scorer(mnist_bundle)
        .score(np.stack([to_model_input(np.asarray(Image.open(s))[None])[0] for s in sources]))
        .scores
    )
    np.testing.assert_allclose([r["score"] for r in rows], [expected[by_source[p]] for p in paths], rtol=1e-5)


def test_resume_refuses_a_foreign_csv(mnist_bundle, pngs, tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["score", str(mnist_bundle), str(pngs), "-o", str(out), "--resume"])
    assert result.exit_code == 2 and "not an aeguard score CSV" in result.stderr


def test_ray_engine_matches_the_local_engine_row_for_row(mnist_bundle, pngs, tmp_path):
    """A local Ray instance (the machine's cores: 2 in CI) gives the local engine's rows, broken files included."""
    pytest.importorskip("ray")
    reasons = broken_corpus(tmp_path / "corpus")
    inputs = sorted(map(str, pngs.iterdir())) + sorted(map(str, (tmp_path / "corpus").iterdir()))
    outputs = {engine: tmp_path / f"{engine}.csv" for engine in ("local", "ray")}
    for engine, out in outputs.items():
        result = runner.invoke(
            app,
            [
                "score",
                str(mnist_bundle),
                *inputs,
                "-o",
                str(out),
                "--engine",
                engine,
                "--batch-size",
                "16",
                "--max-pixels",
                "1000000",
            ],
        )
        assert result.exit_code == 3, result.output
        assert f"{len(reasons)} unreadable" in result.stderr and "scored 61 images" in result.stderr
    local, remote = read_csv(outputs["local"]), read_csv(outputs["ray"])
    assert [r["path"] for r in remote] == [r["path"] for r in local] == inputs
    assert [r["error"] for r in remote] == [r["error"] for r in local]
    assert [r["is_anomaly"] for r in remote] == [r["is_anomaly"] for r in local]
    np.testing.assert_allclose(
        [float(r["score"] or "nan") for r in remote], [float(r["score"] or "nan") for r in local], rtol=1e-6
    )


def test_decode_pool_survives_a_worker_that_dies(pngs):
    """A decoder crash kills its worker process; the batch is decoded again file by file, nothing is lost."""
    from aeguard.batch.decoding import DecodePool

    names = [str(p) for p in sorted(pngs.iterdir())[:3]]
    pool = DecodePool(1)
    try:
        dying = pool.pool.submit(os._exit, 1)  # stands in for a segfault inside a decoder
        decoded = pool.result(names, dying, Preprocessing(1, 28, 28), 1_000_000)
        assert len(decoded) == 3 and all(isinstance(a, np.ndarray) and a.shape == (1, 28, 28) for a in decoded)
        assert (
            len(pool.submit(names, Preprocessing(1, 28, 28), 1_000_000).result()) == 3
        )  # the restarted pool keeps working
    finally:
        pool.close()
