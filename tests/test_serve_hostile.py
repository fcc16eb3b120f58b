"""The daemon against hostile clients and broken bundles: a 4xx for each bad request, nothing half-done or silent."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from aeguard.data import images as image_module
from aeguard.errors import UsageError
from aeguard.serve import model_store, payloads
from aeguard.serve.app import create_app
from aeguard.serve.protocol import MAX_HEAD_BYTES, MAX_HEADERS
from aeguard.serve.settings import ServeSettings
from tests.bundles import edit_manifest, tiny_bundle
from tests.daemon import Daemon


@pytest.fixture
def bundle(tmp_path):
    return tiny_bundle(tmp_path / "tiny")


@pytest.fixture
def client(bundle):
    with TestClient(
        create_app(ServeSettings(bundle=bundle, admin_token="adm", watch_interval_s=0, max_images_per_request=4)),
        raise_server_exceptions=False,
    ) as running:
        yield running


def png(value: int = 100, size=(28, 28)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def infer(client, body, headers=None, content=None):
    if content is None:
        content = json.dumps(body).encode()
    return client.post(
        "/v2/models/tiny/infer", content=content, headers={"content-type": "application/json", **(headers or {})}
    )


GOOD_TENSOR = {"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8", "data": [0] * 784}


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [GOOD_TENSOR], "parameters": "binary"},
        {"inputs": [{**GOOD_TENSOR, "datatype": 5}]},
        {"inputs": [{**GOOD_TENSOR, "parameters": []}]},
        {"inputs": [GOOD_TENSOR], "outputs": "score"},
        {"inputs": [GOOD_TENSOR], "outputs": [5]},
        {"inputs": [GOOD_TENSOR], "outputs": [{"name": "score", "parameters": {"binary_data": "yes"}}]},
        {"inputs": [{**GOOD_TENSOR, "shape": [True, 1, 28, 28]}]},
        {"inputs": [{**GOOD_TENSOR, "shape": [1, 1, 28, 28.0]}]},
        {"inputs": [{**GOOD_TENSOR, "parameters": {"binary_data_size": -1}}]},
        {"inputs": {}},
        {"inputs": [GOOD_TENSOR], "id": 7},
        [1, 2],
    ],
)
def test_infer_bodies_of_the_wrong_json_type_are_400(client, body):
    reply = infer(client, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "RequestError"


def test_a_good_infer_request_still_works(client):
    reply = infer(client, {"inputs": [GOOD_TENSOR], "id": "r1"})
    assert reply.status_code == 200 and reply.json()["id"] == "r1"


def test_binary_data_without_binary_data_size_is_400(client):
    header = json.dumps({"inputs": [{**GOOD_TENSOR, "data": None}]}).encode()
    reply = client.post(
        "/v2/models/tiny/infer",
        content=header + bytes(784),
        headers={"inference-header-content-length": str(len(header))},
    )
    assert reply.status_code == 400 and "binary_data_size" in reply.text


def test_json_data_in_a_binary_request_with_binary_outputs_works(client):
    header = json.dumps({"inputs": [GOOD_TENSOR], "parameters": {"binary_data_output": True}}).encode()
    reply = client.post(
        "/v2/models/tiny/infer", content=header, headers={"inference-header-content-length": str(len(header))}
    )
    assert reply.status_code == 200
    length = int(reply.headers["inference-header-content-length"])
    assert np.frombuffer(reply.content[length : length + 4], "<f4")[0] == pytest.approx(0.25)


@pytest.mark.parametrize("value", ["١٢", "²", "12abc", "-1", " 12", "9" * 40])
def test_a_header_length_that_is_not_ascii_digits_is_400(client, value):
    reply = client.post(
        "/v2/models/tiny/infer", content=b"{}" * 20, headers={"inference-header-content-length": value.encode()}
    )
    assert reply.status_code == 400 and "Inference-Header-Content-Length" in reply.text


def test_multipart_without_a_boundary_is_400(client):
    reply = client.post("/v1/score/image", content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data"})
    assert reply.status_code == 400, reply.text


def test_more_multipart_files_than_the_limit_is_413(client):
    files = [("file", (f"{i}.png", png(), "image/png")) for i in range(5)]
    assert client.post("/v1/score/image", files=files).status_code == 413


def test_more_multipart_fields_than_the_limit_is_413(client):
    reply = client.post(
        "/v1/score/image", data={f"f{i}": "x" for i in range(1200)}, files=[("file", ("a.png", png(), "image/png"))]
    )
    assert reply.status_code == 413, reply.text


def test_an_image_that_crashes_the_decoder_costs_only_itself(client, monkeypatch):
    real_open = image_module.Image.open

    def open_or_crash(source, *args, **kwargs):
        if source.getvalue().startswith(b"CRASH"):
            raise TypeError("a decoder bug")
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(image_module.Image, "open", open_or_crash)
    good, bad = base64.b64encode(png()).decode(), base64.b64encode(b"CRASH" + png()).decode()
    reply = client.post("/v1/score", json={"images": [good, bad, good]})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert "score" in results[0] and "score" in results[2] and "TypeError" in results[1]["error"]


@pytest.mark.parametrize("pixels", [[["0.5"] * 28] * 28, [[True] * 28] * 28, [[0.5] * 27 + [None]] * 28])
def test_strings_booleans_and_nulls_are_not_pixel_values(client, pixels):
    reply = client.post("/v1/score", json={"images": [pixels, [[0.5] * 28] * 28]})
    assert reply.status_code == 200
    first, second = reply.json()["results"]
    assert "other than numbers" in first["error"] and "score" in second


def test_decoding_never_runs_on_the_event_loop(client, monkeypatch):
    threads = []
    real = payloads.decode_items

    def recording(*args):
        try:
            asyncio.get_running_loop()
            threads.append("event loop")
        except RuntimeError:
            threads.append("worker thread")
        return real(*args)

    monkeypatch.setattr(payloads, "decode_items", recording)
    assert client.post("/v1/score/image", content=png()).status_code == 200
    assert client.post("/v1/score", json={"image": base64.b64encode(png()).decode()}).status_code == 200
    assert threads == ["worker thread", "worker thread"]


def test_405_names_the_allowed_methods(client):
    reply = client.get("/v1/score")
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"


def test_a_model_that_scores_nan_gives_errors_not_verdicts_and_keeps_the_metrics_finite(tmp_path):
    broken = tiny_bundle(tmp_path / "nan", kind="nan_when_bright", threshold=1.0)
    with TestClient(create_app(ServeSettings(bundle=broken, watch_interval_s=0))) as client:
        white = [[1.0] * 28] * 28
        results = client.post("/v1/score", json={"images": [white, [[0.0] * 28] * 28]}).json()["results"]
        assert "non-finite" in results[0]["error"] and results[1]["is_anomaly"] is False
        reply = client.post("/v2/models/tiny/infer", json={"inputs": [{**GOOD_TENSOR, "data": [255] * 784}]})
        assert reply.status_code == 422 and "non-finite" in reply.text
        metrics = client.get("/metrics").text
        ratio_sum = next(line for line in metrics.splitlines() if line.startswith("aeguard_anomaly_score_ratio_sum"))
        assert np.isfinite(float(ratio_sum.split()[-1]))
        assert "aeguard_non_finite_scores_total 2.0" in metrics


def test_a_reload_that_raises_anything_is_refused_counted_and_shown(client, monkeypatch):
    def broken(*args):
        raise ValueError("not an aeguard error")

    monkeypatch.setattr(model_store, "load_model", broken)
    reply = client.post("/admin/reload", headers={"authorization": "Bearer adm"})
    assert reply.status_code == 422 and "not an aeguard error" in reply.json()["error"]
    assert client.get("/v2/health/ready").json() == {"ready": True, "last_reload_failed": "BundleError"}
    assert 'aeguard_model_reloads_total{result="failure"} 1.0' in client.get("/metrics").text


def test_a_bundle_without_calibration_is_not_half_swapped(client, bundle, tmp_path):
    before = client.get("/v2/models/tiny").json()
    other = tiny_bundle(tmp_path / "other", threshold=0.2)
    for path in other.iterdir():
        path.replace(bundle / path.name)
    edit_manifest(bundle, lambda m: m.pop("calibration"))
    reply = client.post("/admin/reload", headers={"authorization": "Bearer adm"})
    assert reply.status_code == 422 and "calibration" in reply.json()["error"]
    assert client.get("/v2/models/tiny").json() == before  # the old model, its threshold, still served
    assert "aeguard_model_threshold 0.1" in client.get("/metrics").text


def test_the_watcher_survives_any_fault(bundle, monkeypatch):
    calls = []

    def flaky(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("stat failed in a strange way")
        return False

    monkeypatch.setattr(model_store.ModelStore, "changed_on_disk", flaky)
    with TestClient(create_app(ServeSettings(bundle=bundle, watch_interval_s=0.05))):
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) >= 3  # it kept polling after the fault


def test_an_empty_token_is_refused(bundle):
    with pytest.raises(UsageError, match="api_token is set but empty"):
        ServeSettings(bundle=".", api_token="")
    result = subprocess.run(
        [sys.executable, "-m", "aeguard.cli.main", "serve", str(bundle), "--port", "1"],
        env={**os.environ, "AEGUARD_API_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "api_token is set but empty" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    bundle = tiny_bundle(tmp_path_factory.mktemp("served") / "tiny")
    with Daemon(bundle, "--header-timeout", "0.5") as running:
        yield running


def raw_exchange(daemon, data: bytes, pause: float = 0.0, chunks: int = 1) -> bytes:
    """Send `data` (in `chunks` pieces, `pause` seconds apart) and return all the daemon answers."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        step = max(1, len(data) // chunks)
        try:
            for start in range(0, len(data), step):
                sock.sendall(data[start : start + step])
                time.sleep(pause)
        except OSError:
            pass  # the daemon closed the connection while we were still sending
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # the daemon closed with our unread bytes in its buffer: its answer came before the reset
        return answer


def test_a_huge_header_is_431_and_the_daemon_stays_well(daemon):
    answer = raw_exchange(
        daemon, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (4 * MAX_HEAD_BYTES), chunks=16
    )
    assert answer.startswith(b"HTTP/1.1 431")
    assert daemon.client.get("/v2/health/live").status_code == 200


def test_too_many_headers_is_431(daemon):
    head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(MAX_HEADERS + 5))
    assert raw_exchange(daemon, head + b"\r\n").startswith(b"HTTP/1.1 431")


def test_an_idle_connection_is_dropped(daemon):
    started = time.monotonic()
    answer = raw_exchange(daemon, b"")
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5


def test_a_header_sent_a_byte_at_a_time_is_dropped(daemon):
    head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 40 + b"\r\n\r\n"
    started = time.monotonic()
    answer = raw_exchange(daemon, head, pause=0.05, chunks=len(head))
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5


def test_keep_alive_requests_each_get_a_fresh_deadline(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"live":true}'):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.3)  # within the deadline each time, 0.9 s in all


def test_the_body_of_a_request_refused_early_is_not_read_as_the_next_head(tmp_path):
    """A body over the limit is refused (413) from its declared length, before it arrives. The client sends
    that body anyway and then its next request on the same connection: the body's bytes must be read as the
    refused request's body, not counted as the next request's head (they once made it a 431: a good request
    lost behind a bad one)."""
    with Daemon(tiny_bundle(tmp_path / "tiny"), "--max-body-bytes", "1000") as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            length = 4 * MAX_HEAD_BYTES
            head = b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            sock.sendall(head + b"content-length: %d\r\n\r\n" % length)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" not in answer.lower()
            sock.sendall(b"x" * length + b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            while not answer.endswith(b'{"live":true}'):
                chunk = sock.recv(65536)
                assert chunk, f"the daemon closed the connection: {answer[-200:]!r}"
                answer += chunk
            assert b"HTTP/1.1 200" in answer and b"HTTP/1.1 431" not in answer
