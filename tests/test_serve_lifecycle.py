"""Hot reload, drain on SIGTERM, several workers, and a plain-HTTP Open Inference Protocol client."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request

import numpy as np
import pytest
from PIL import Image

from aeguard.data.catalog import load_split
from tests.daemon import Daemon


@pytest.fixture(scope="module")
def dense_bundle(data_dir, tmp_path_factory):
    """A second, different model of the same input shape, to reload into."""
    from aeguard.config import DetectorConfig, TrainConfig
    from aeguard.train.job import FitOptions, run_fit

    out = tmp_path_factory.mktemp("dense") / "dense0"
    config = DetectorConfig(model="dense", train=TrainConfig(epochs=1, device="cpu"))
    run_fit(FitOptions(out=out, config=config, data_dir=data_dir, allow_download=False), log=lambda line: None)
    return out


def version_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())["files"]["model.onnx"]["sha256"][:12]


def swap_bundle(source, served):
    """Replace the served directory the way `aeguard fit --force` does: build beside it, then rename."""
    staging = served.with_name(served.name + ".new")
    shutil.copytree(source, staging)
    old = served.with_name(served.name + ".old")
    os.replace(served, old)
    os.replace(staging, served)
    shutil.rmtree(old)


def served_version(daemon):
    return daemon.client.get(f"/v2/models/{daemon.name}").json()["versions"][0]


def test_reload_on_change_sighup_and_admin_call(mnist_bundle, dense_bundle, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(mnist_bundle, served)
    with Daemon(
        served, "--model-name", "digits", env={"AEGUARD_ADMIN_TOKEN": "adm"}, log_path=tmp_path / "log"
    ) as daemon:
        daemon.name = "digits"
        assert served_version(daemon) == version_of(mnist_bundle)

        swap_bundle(dense_bundle, served)  # the watcher picks up a good new bundle
        daemon.wait_until(lambda: served_version(daemon) == version_of(dense_bundle), "no reload after change")
        assert daemon.metric("aeguard_model_reloads_total", result="success") == 2
        assert daemon.metric("aeguard_model_info", version=version_of(dense_bundle)) == 1
        assert daemon.metric("aeguard_model_info", version=version_of(mnist_bundle)) == 0

        # a corrupt bundle is refused; the old model keeps serving and the failure shows
        data = bytearray((served / "model.onnx").read_bytes())
        data[100] ^= 0xFF
        (served / "model.onnx").write_bytes(bytes(data))
        os.utime(served / "manifest.json")  # a deploy tool touching the manifest
        daemon.wait_until(
            lambda: daemon.metric("aeguard_model_reloads_total", result="failure") == 1, "corrupt bundle not noticed"
        )
        assert served_version(daemon) == version_of(dense_bundle)
        ready = daemon.client.get("/v2/health/ready")
        assert ready.json() == {"ready": True, "last_reload_failed": "BundleError"}
        assert str(served) not in ready.text  # unauthenticated: no paths, no hashes
        score = daemon.client.post("/v1/score", json={"images": [[[0.0] * 28] * 28]})
        assert score.status_code == 200 and score.json()["model"]["version"] == version_of(dense_bundle)
        assert "model reload refused" in daemon.log()

        # the admin call needs its token and reports the refusal
        assert daemon.client.post("/admin/reload").status_code == 401
        refused = daemon.client.post("/admin/reload", headers={"authorization": "Bearer adm"})
        assert refused.status_code == 422 and refused.json()["serving"] == version_of(dense_bundle)
        assert "checksum mismatch" in refused.json()["error"]  # the admin, authenticated, sees why

        # SIGHUP after the operator puts the first bundle back
        shutil.rmtree(served)
        shutil.copytree(mnist_bundle, served)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_until(lambda: served_version(daemon) == version_of(mnist_bundle), "no reload on SIGHUP")
        ok = daemon.client.post("/admin/reload", headers={"authorization": "Bearer adm"})
        assert ok.status_code == 200 and ok.json()["version"] == version_of(mnist_bundle)
        assert daemon.process.poll() is None


def test_sigterm_turns_readiness_false_then_drains(mnist_bundle, tmp_path):
    with Daemon(mnist_bundle, "--drain-seconds", "1.5", log_path=tmp_path / "log") as daemon:
        results = []
        body = {"images": [[[0.5] * 28] * 28] * 8}

        def hammer():
            for _ in range(40):
                results.append(daemon.client.post("/v1/score", json=body).status_code)

        worker = threading.Thread(target=hammer)
        worker.start()
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_until(lambda: daemon.client.get("/v2/health/ready").status_code == 503, "still ready", 2)
        assert daemon.client.get("/v2/health/live").status_code == 200  # alive while draining
        assert daemon.client.post("/v1/score", json=body).status_code == 200  # and still serving
        worker.join()
        assert daemon.process.wait(timeout=30) == 0
    assert results and set(results) == {200}


def test_several_workers_share_metrics(mnist_bundle, tmp_path):
    with Daemon(mnist_bundle, "--workers", "2", log_path=tmp_path / "log") as daemon:
        for _ in range(30):
            assert daemon.client.post("/v1/score", json={"images": [[[0.2] * 28] * 28] * 2}).status_code == 200
        # whichever worker answers the scrape, the totals cover both
        for _ in range(4):
            assert daemon.metric("aeguard_images_scored_total") == 60
            assert daemon.metric("aeguard_http_requests_total", endpoint="score", code="200") == 30
        assert daemon.stop() == 0


def test_an_open_inference_protocol_client_matches_aeguard_score(mnist_bundle, data_dir, tmp_path):
    """A client written from the OIP v2 spec alone (urllib, JSON), against the CLI's CSV for the same PNGs."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    test = load_split("mnist", "test", data_dir)
    for i in range(12):
        Image.fromarray(test.images[i]).save(folder / f"{i:02d}.png")
    out = tmp_path / "scores.csv"
    subprocess.run(
        [sys.executable, "-m", "aeguard.cli.main", "score", str(mnist_bundle), str(folder), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    cli_scores = {os.path.basename(r["path"]): float(r["score"]) for r in csv.DictReader(out.open())}
    with Daemon(mnist_bundle) as daemon:
        names = sorted(os.listdir(folder))
        pixels = [np.asarray(Image.open(folder / n)).tolist() for n in names]
        request = {
            "inputs": [{"name": "images", "shape": [len(names), 1, 28, 28], "datatype": "UINT8", "data": pixels}]
        }
        raw = urllib.request.urlopen(
            urllib.request.Request(
                f"{daemon.url}/v2/models/mnist0/infer",
                data=json.dumps(request).encode(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=30,
        ).read()
        outputs = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
    np.testing.assert_allclose(outputs["score"], [cli_scores[n] for n in names], rtol=1e-6)


def test_daemon_never_imports_torch(mnist_bundle):
    script = textwrap.dedent(f"""
        import sys
        from starlette.testclient import TestClient
        import aeguard.cli.serve, aeguard.serve.server
        from aeguard.serve.app import create_app
        from aeguard.serve.settings import ServeSettings
        with TestClient(create_app(ServeSettings(bundle={str(mnist_bundle)!r}))) as client:
            assert client.post("/v1/score", json={{"images": [[[0.0] * 28] * 28]}}).status_code == 200
            assert client.get("/metrics").status_code == 200
        print("TORCH_MODULES", sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TORCH_MODULES []" in done.stdout


def test_serve_refuses_a_bad_bundle_at_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "aeguard.cli.main", "serve", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 4 and "no manifest.json" in done.stderr
