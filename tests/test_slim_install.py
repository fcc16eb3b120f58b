"""The base install, as the serving image makes it, scores and serves with no torch, onnx, scikit-learn,
SciPy or matplotlib in it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from tests.bundles import tiny_bundle
from tests.daemon import free_port

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "sklearn", "scipy", "matplotlib")


def test_the_base_install_scores_and_serves_without_the_heavy_stacks(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for args in (["-r", str(ROOT / "deploy/requirements-scoring.txt")], ["--no-deps", str(ROOT)]):  # the image's steps
        done = subprocess.run(pip + args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    probe = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"

    bundle = tiny_bundle(tmp_path / "bundle")
    Image.new("L", (28, 28), 250).save(tmp_path / "bright.png")
    aeguard = str(venv / "bin" / "aeguard")
    scored = subprocess.run(
        [aeguard, "score", str(bundle), str(tmp_path / "bright.png")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[1].endswith(",true,")  # path, score, threshold, is_anomaly, error
    evaluated = subprocess.run(
        [aeguard, "evaluate", str(bundle), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert evaluated.returncode == 1 and "pip install 'aeguard[report]'" in evaluated.stderr, evaluated.stderr

    port = free_port()
    daemon = subprocess.Popen(
        [aeguard, "serve", str(bundle), "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert daemon.poll() is None, "the daemon exited"
                time.sleep(0.1)
            reply = client.post("/v1/score", json={"images": [[[1.0] * 28] * 28]})
        assert reply.status_code == 200 and reply.json()["results"][0]["is_anomaly"] is True
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
