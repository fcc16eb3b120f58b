"""The real daemon on a free loopback port: every endpoint, error paths, limits, token, metrics values."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from aeguard.data.catalog import load_split
from aeguard.data.splits import to_model_input
from aeguard.scoring.scorer import Scorer
from tests.daemon import Daemon


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return load_split("mnist", "test", data_dir)


@pytest.fixture(scope="module")
def daemon(mnist_bundle, tmp_path_factory):
    with Daemon(
        mnist_bundle,
        "--max-images",
        "16",
        "--max-body-bytes",
        "200000",
        "--max-pixels",
        "10000",
        log_path=tmp_path_factory.mktemp("log") / "daemon.log",
    ) as running:
        yield running


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(pixels: np.ndarray) -> str:
    return base64.b64encode(png_bytes(pixels)).decode()


def expected_scores(bundle, images_uint8):
    return Scorer(bundle).score(to_model_input(images_uint8)).scores


def test_health_and_metadata(daemon, mnist_bundle):
    assert daemon.client.get("/v2/health/live").json() == {"live": True}
    assert daemon.client.get("/v2/health/ready").json()["ready"] is True
    meta = daemon.client.get("/v2/models/mnist0").json()
    assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert [o["name"] for o in meta["outputs"]] == ["score", "is_anomaly", "anomaly_map"]
    assert meta["parameters"]["execution_provider"] == "cpu"  # --provider auto, on a CPU-only onnxruntime
    assert daemon.metric("aeguard_model_info", provider="cpu") == 1
    manifest = json.loads((mnist_bundle / "manifest.json").read_text())
    assert meta["versions"] == [manifest["files"]["model.onnx"]["sha256"][:12]]
    assert daemon.client.get("/v2/models/mnist0/ready").json()["ready"] is True
    assert daemon.client.get("/v2").json()["name"] == "aeguard"
    document = daemon.client.get("/openapi.json").json()
    assert {"/v1/score", "/v2/models/{name}/infer", "/metrics"} <= set(document["paths"])


def test_every_response_carries_a_request_id(daemon):
    ours = daemon.client.get("/v2/health/live", headers={"x-request-id": "trace-42"})
    assert ours.headers["x-request-id"] == "trace-42"  # the caller's id comes back
    made = [daemon.client.get("/v2/health/live").headers["x-request-id"] for _ in range(2)]
    assert made[0] != made[1] and all(len(i) == 20 for i in made)
    error = daemon.client.post("/v2/models/mnist0/infer", content=b"{oops")
    assert error.status_code == 400 and error.json()["request_id"] == error.headers["x-request-id"]
    assert error.headers["content-type"] == "application/json"


def test_v1_score_base64_and_arrays_agree_with_the_runtime(daemon, mnist_bundle, mnist_test):
    pixels = mnist_test.images[:6]
    body = {"images": [b64(p) for p in pixels[:3]] + [(p / 255.0).tolist() for p in pixels[3:]]}
    response = daemon.client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    scores = [r["score"] for r in data["results"]]
    np.testing.assert_allclose(scores, expected_scores(mnist_bundle, pixels), rtol=1e-5)
    assert all(r["is_anomaly"] == (r["score"] > data["threshold"]) for r in data["results"])
    assert data["model"]["name"] == "mnist0" and data["n_scored"] == 6


def test_a_bad_item_never_costs_the_good_ones(daemon, mnist_test):
    body = {"images": [b64(mnist_test.images[0]), "%%%not-base64", [[0.1, 0.2]], 42]}
    data = daemon.client.post("/v1/score", json=body).json()
    assert "score" in data["results"][0]
    assert "invalid base64" in data["results"][1]["error"]
    assert "array shape" in data["results"][2]["error"]
    assert "expected a base64 string" in data["results"][3]["error"]
    assert data["n_scored"] == 1 and data["n_errors"] == 3


def test_raw_and_multipart_image_uploads(daemon, mnist_bundle, mnist_test):
    pixels = mnist_test.images[10:13]
    raw = daemon.client.post("/v1/score/image", content=png_bytes(pixels[0]), headers={"content-type": "image/png"})
    assert raw.status_code == 200
    files = [("files", (f"img{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(pixels)]
    files.append(("files", ("broken.png", b"not an image", "image/png")))
    multi = daemon.client.post("/v1/score/image", files=files)
    assert multi.status_code == 200, multi.text
    results = multi.json()["results"]
    assert [r["filename"] for r in results] == ["img0.png", "img1.png", "img2.png", "broken.png"]
    np.testing.assert_allclose([r["score"] for r in results[:3]], expected_scores(mnist_bundle, pixels), rtol=1e-5)
    assert results[0]["score"] == pytest.approx(raw.json()["results"][0]["score"])
    assert "not a recognised image" in results[3]["error"]


def test_open_inference_protocol(daemon, mnist_bundle, mnist_test):
    pixels = mnist_test.images[:5]
    expected = expected_scores(mnist_bundle, pixels)
    fp32 = {
        "id": "req-1",
        "inputs": [
            {
                "name": "images",
                "shape": [5, 1, 28, 28],
                "datatype": "FP32",
                "data": (pixels / 255.0).astype(np.float32).ravel().tolist(),
            }
        ],
    }
    response = daemon.client.post("/v2/models/mnist0/infer", json=fp32)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-1" and body["model_name"] == "mnist0"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["score"]["shape"] == [5] and outputs["is_anomaly"]["datatype"] == "BOOL"
    np.testing.assert_allclose(outputs["score"]["data"], expected, rtol=1e-5)
    uint8 = {
        "inputs": [
            {"name": "images", "shape": [5, 28, 28], "datatype": "UINT8", "data": pixels.tolist()},
        ],
        "outputs": [{"name": "score"}],
    }
    body = daemon.client.post(f"/v2/models/mnist0/versions/{body['model_version']}/infer", json=uint8).json()
    assert [o["name"] for o in body["outputs"]] == ["score"]
    np.testing.assert_allclose(body["outputs"][0]["data"], expected, rtol=1e-5)


def test_open_inference_protocol_binary_tensor_extension(daemon, mnist_bundle, mnist_test):
    pixels = mnist_test.images[20:24]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [4, 1, 28, 28],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.size},
                }
            ],
            "outputs": [{"name": "score", "parameters": {"binary_data": True}}, {"name": "is_anomaly"}],
        }
    ).encode()
    response = daemon.client.post(
        "/v2/models/mnist0/infer",
        content=header + pixels.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    cut = int(response.headers["inference-header-content-length"])
    body = json.loads(response.content[:cut])
    score_entry, flag_entry = body["outputs"]
    assert score_entry["parameters"]["binary_data_size"] == 16 and "data" not in score_entry
    scores = np.frombuffer(response.content[cut:], dtype="<f4")
    np.testing.assert_allclose(scores, expected_scores(mnist_bundle, pixels), rtol=1e-5)
    assert flag_entry["data"] == (scores > body["parameters"]["threshold"]).tolist()
    short = daemon.client.post(
        "/v2/models/mnist0/infer",
        content=header + pixels.tobytes()[:-1],
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert short.status_code == 400 and "needs 3136" in short.json()["error"]["message"]


@pytest.mark.parametrize(
    "path, kwargs, status, words",
    [
        ("/v1/score", {"content": b"{oops", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ("/v1/score", {"json": {"images": ["@@@"]}}, 400, "invalid base64"),
        ("/v1/score", {"json": {"pictures": []}}, 400, 'needs "images"'),
        ("/v1/score", {"json": {"images": [[[0.0] * 28] * 28] * 17}}, 413, "limit is 16"),
        (
            "/v1/score",
            {"content": b"x" * 200_001, "headers": {"content-type": "application/json"}},
            413,
            "over the limit",
        ),
        ("/v1/score/image", {"content": png_bytes(np.zeros((200, 200), np.uint8))}, 413, "pixel limit of 10000"),
        (
            "/v2/models/mnist0/infer",
            {
                "json": {
                    "inputs": [{"name": "images", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0.0] * 1024}]
                }
            },
            400,
            "does not fit this model",
        ),
        (
            "/v2/models/mnist0/infer",
            {"json": {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "INT64", "data": [0] * 784}]}},
            400,
            "not supported",
        ),
        (
            "/v2/models/mnist0/infer",
            {"json": {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 700}]}},
            400,
            "needs 784",
        ),
        (
            "/v2/models/mnist0/infer",
            {"json": {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [300] * 784}]}},
            400,
            "integers in 0-255",
        ),
        (
            "/v2/models/mnist0/infer",
            {"json": {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [1.5] * 784}]}},
            400,
            "integers in 0-255",
        ),
        (
            "/v2/models/mnist0/infer",
            {"json": {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [2.0] * 784}]}},
            400,
            "within [0, 1]",
        ),
        ("/v2/models/other/infer", {"json": {"inputs": []}}, 404, "unknown model 'other'"),
        ("/v2/nothing-here", {}, 404, "no such endpoint"),
    ],
)
def test_errors_are_json_with_a_4xx_that_names_the_problem(daemon, path, kwargs, status, words):
    response = daemon.client.post(path, **kwargs) if kwargs or path != "/v2/nothing-here" else daemon.client.get(path)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert daemon.process.poll() is None  # and the daemon is still up


def test_metrics_count_what_happened(mnist_bundle, mnist_test, tmp_path):
    with Daemon(mnist_bundle, log_path=tmp_path / "log") as daemon:
        pixels = mnist_test.images[:20]
        scores = expected_scores(mnist_bundle, pixels)
        threshold = Scorer(mnist_bundle).threshold
        for chunk in (pixels[:7], pixels[7:]):
            assert daemon.client.post("/v1/score", json={"images": [b64(p) for p in chunk]}).status_code == 200
        daemon.client.post("/v1/score", json={"images": ["@@@"]})
        assert daemon.metric("aeguard_images_scored_total") == 20
        assert daemon.metric("aeguard_anomalies_total") == int((scores > threshold).sum())
        assert daemon.metric("aeguard_http_requests_total", endpoint="score", code="200") == 2
        assert daemon.metric("aeguard_http_requests_total", endpoint="score", code="400") == 1
        assert daemon.metric("aeguard_http_request_duration_seconds_count", endpoint="score") == 3
        assert daemon.metric("aeguard_batch_size_images_sum") == 20
        assert daemon.metric("aeguard_anomaly_score_ratio_count") == 20
        assert daemon.metric("aeguard_anomaly_score_ratio_bucket", le="1.0") == int((scores <= threshold).sum())
        assert daemon.metric("aeguard_model_threshold") == pytest.approx(threshold)
        version = json.loads((mnist_bundle / "manifest.json").read_text())["files"]["model.onnx"]["sha256"][:12]
        assert daemon.metric("aeguard_model_info", version=version, model="mnist0") == 1
        assert daemon.metric("aeguard_model_reloads_total", result="success") == 1
        assert daemon.metric("aeguard_http_requests_in_flight") == 1  # the scrape itself
        assert daemon.metric("process_resident_memory_bytes") > 0


def test_bearer_token(mnist_bundle, mnist_test):
    with Daemon(mnist_bundle, env={"AEGUARD_API_TOKEN": "s3cret"}) as daemon:
        body = {"images": [b64(mnist_test.images[0])]}
        assert daemon.client.post("/v1/score", json=body).status_code == 401
        wrong = daemon.client.post("/v1/score", json=body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]["message"]
        right = daemon.client.post("/v1/score", json=body, headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert daemon.client.get("/v2/health/ready").status_code == 200  # probes stay open
        assert daemon.client.post("/admin/reload").status_code == 404  # no admin token: disabled
