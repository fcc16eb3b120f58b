"""An RGB bundle scores the same through every front end; anomaly maps come back only when asked for."""

from __future__ import annotations

import base64
import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aeguard.cli.main import app
from aeguard.data.contract import Preprocessing
from aeguard.data.images import load_image
from aeguard.scoring.scorer import Scorer
from tests.bundles import tiny_bundle
from tests.daemon import Daemon

SIZE = (12, 10)  # height x width: not square, so a swapped axis cannot pass


@pytest.fixture(scope="module")
def rgb_bundle(tmp_path_factory):
    """A 3-channel bundle whose score weighs the channels 1/3, 2/3, 1: a channel or axis mix-up changes it."""
    folder = tmp_path_factory.mktemp("rgb") / "bundle"  # its input entry as a fit writes it now
    return tiny_bundle(folder, size=SIZE, channels=3, threshold=0.06, input=Preprocessing(3, *SIZE).spec())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        pixels[..., index % 3] = 255  # each photo leans to one channel
        Image.fromarray(pixels).save(folder / f"p{index}.png")
    # a camera's JPEG stored on its side (EXIF Orientation 6): every front end must read it upright, at SIZE
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)))
    Image.fromarray(stored).save(folder / "p6.jpg", quality=95, exif=exif)
    return sorted(folder.iterdir())


def expected(bundle, paths) -> np.ndarray:
    scorer = Scorer(bundle)
    return scorer.score(np.stack([load_image(p, scorer.preprocessing) for p in paths])).scores


def test_the_rgb_contract_is_in_the_bundle(rgb_bundle, photos):
    scorer = Scorer(rgb_bundle)
    assert scorer.preprocessing == Preprocessing(3, *SIZE)
    scores = expected(rgb_bundle, photos)
    assert len(set(np.round(scores, 6))) == len(photos)  # the photos are told apart
    swapped = np.stack([load_image(p, scorer.preprocessing)[::-1] for p in photos])  # BGR
    assert not np.allclose(scorer.score(swapped).scores, scores)


def cli_scores(bundle, inputs, out, *engine) -> dict[str, float]:
    result = CliRunner().invoke(app, ["score", str(bundle), *map(str, inputs), "-o", str(out), *engine])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


def test_cli_and_ray_score_rgb_files_as_the_scorer_does(rgb_bundle, photos, tmp_path):
    want = dict(zip(map(str, photos), expected(rgb_bundle, photos)))
    local = cli_scores(rgb_bundle, photos, tmp_path / "local.csv")
    assert local == pytest.approx(want, abs=1e-6)
    pytest.importorskip("ray")
    remote = cli_scores(rgb_bundle, photos, tmp_path / "ray.csv", "--engine", "ray")
    assert remote == pytest.approx(want, abs=1e-6)


def png(path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def daemon(rgb_bundle, tmp_path_factory):
    with Daemon(rgb_bundle, log_path=tmp_path_factory.mktemp("log") / "daemon.log") as running:
        yield running


def test_the_daemon_scores_rgb_files_and_tensors_in_both_layouts(daemon, rgb_bundle, photos):
    want = expected(rgb_bundle, photos)
    body = {"images": [base64.b64encode(png(p)).decode() for p in photos]}
    reply = daemon.client.post("/v1/score", json=body).json()
    assert [row["score"] for row in reply["results"]] == pytest.approx(want.tolist(), abs=1e-6)
    assert all("anomaly_map" not in row for row in reply["results"])  # maps only when asked for

    scorer = Scorer(rgb_bundle)
    nchw = np.stack([load_image(p, scorer.preprocessing) for p in photos])
    for layout, tensor in (("NCHW", nchw), ("NHWC", nchw.transpose(0, 2, 3, 1))):
        request = {
            "inputs": [
                {"name": "images", "datatype": "FP32", "shape": list(tensor.shape), "data": tensor.ravel().tolist()}
            ]
        }
        reply = daemon.client.post("/v2/models/tiny/infer", json=request)
        assert reply.status_code == 200, (layout, reply.text)
        scores = next(o for o in reply.json()["outputs"] if o["name"] == "score")["data"]
        assert scores == pytest.approx(want.tolist(), abs=1e-6), layout
    wrong = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 10, 12], "data": [0.5] * 360}]}
    reply = daemon.client.post("/v2/models/tiny/infer", json=wrong)
    assert reply.status_code == 400 and "[N, 3, 12, 10] or [N, 12, 10, 3]" in reply.json()["error"]["message"]


def decode_map(payload: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(payload["data"]), "<f4").reshape(payload["shape"])


def test_anomaly_maps_come_back_when_asked_for(daemon, rgb_bundle, photos):
    scorer = Scorer(rgb_bundle)
    images = np.stack([load_image(p, scorer.preprocessing) for p in photos[:2]])
    want = scorer.anomaly_maps(images).mean(axis=1)
    body = {"images": [base64.b64encode(png(p)).decode() for p in photos[:2]] + ["not base64!"], "maps": True}
    rows = daemon.client.post("/v1/score", json=body).json()["results"]
    np.testing.assert_allclose(decode_map(rows[0]["anomaly_map"]), want[0], atol=1e-6)
    np.testing.assert_allclose(decode_map(rows[1]["anomaly_map"]), want[1], atol=1e-6)
    assert "error" in rows[2] and "anomaly_map" not in rows[2]  # the bad item costs only its own result

    upload = daemon.client.post("/v1/score/image?maps=true", content=png(photos[0]))
    np.testing.assert_allclose(decode_map(upload.json()["results"][0]["anomaly_map"]), want[0], atol=1e-6)

    tensor = images.transpose(0, 2, 3, 1)
    request = {
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": list(tensor.shape), "data": tensor.ravel().tolist()}
        ],
        "outputs": [{"name": "score"}, {"name": "anomaly_map"}],
    }
    outputs = {o["name"]: o for o in daemon.client.post("/v2/models/tiny/infer", json=request).json()["outputs"]}
    assert outputs["anomaly_map"]["shape"] == [2, *SIZE]
    np.testing.assert_allclose(np.array(outputs["anomaly_map"]["data"]).reshape(2, *SIZE), want, atol=1e-6)
    assert set(outputs) == {"score", "anomaly_map"}


def test_heat_maps_of_rgb_anomalies_are_written(rgb_bundle, photos, tmp_path):
    maps = tmp_path / "maps"
    result = CliRunner().invoke(
        app, ["score", str(rgb_bundle), *map(str, photos), "-o", str(tmp_path / "s.csv"), "--save-maps", str(maps)]
    )
    assert result.exit_code == 0, result.output
    written = sorted(maps.iterdir())
    assert (
        "6 anomalies" in result.stderr
        and len(written) == 6
        and all(Image.open(p).size == (SIZE[1], SIZE[0]) for p in written)
    )
