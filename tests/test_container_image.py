"""The serving image, built and run for real: podman (no daemon) on a Debian base made by mmdebstrap.

Builds deploy/docker/Dockerfile.serve on `deploy/image/build-base`'s image, starts it with a real MNIST
bundle mounted, scores PNGs through it and compares with `aeguard score` on the same files, and checks
what the image promises: HEALTHCHECK, uid 10001, no torch, a clean stop on SIGTERM. CI installs podman,
buildah, mmdebstrap and runc (.ci/run); elsewhere the test is skipped when they are missing.
"""

from __future__ import annotations

import csv
import json
import resource
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.daemon import free_port
from tests.test_deploy import tool

ROOT = Path(__file__).resolve().parents[1]
BASE_TAG = "localhost/aeguard-base:bookworm"
IMAGE_TAG = "localhost/aeguard-serve:test"
MAX_IMAGE_MB = 600  # the bookworm base (Python, venv) is ~225 MB; onnxruntime, numpy and the rest ~235 MB


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([tool("podman"), *args], capture_output=True, text=True, check=check, timeout=timeout)


def runtime_args() -> list[str]:
    """How containers start on this machine: runc, because crun refuses its hybrid cgroup v1/v2 mounts, and
    rlimits no higher than this process has (podman asks for nofile 1048576 as root, which needs
    CAP_SYS_RESOURCE; 32768 processes is podman's own cap)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    args = ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=32768:32768"]
    return (["--runtime", "runc"] if shutil.which("runc") else []) + args


@pytest.fixture(scope="module")
def serve_image() -> dict:
    tool("mmdebstrap")
    if podman("image", "exists", BASE_TAG, check=False).returncode != 0:
        subprocess.run([str(ROOT / "deploy/image/build-base"), BASE_TAG], check=True, timeout=900)
    started = time.monotonic()
    podman(
        "build",
        "--quiet",
        "--format",
        "docker",  # OCI image configs have no HEALTHCHECK
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--build-arg",
        f"BASE={BASE_TAG}",
        "--target",
        "serve",
        "-f",
        str(ROOT / "deploy/docker/Dockerfile.serve"),
        "-t",
        IMAGE_TAG,
        str(ROOT),
        timeout=900,
    )
    build_seconds = time.monotonic() - started
    inspected = json.loads(podman("image", "inspect", IMAGE_TAG).stdout)[0]
    base_size = json.loads(podman("image", "inspect", BASE_TAG).stdout)[0]["Size"]
    print(
        f"\nserving image {IMAGE_TAG}: {inspected['Size'] / 1e6:.0f} MB "
        f"(base {base_size / 1e6:.0f} MB), built in {build_seconds:.0f} s"
    )
    return inspected


@pytest.fixture
def pngs(data_dir, tmp_path) -> Path:
    from aeguard.data.catalog import load_split

    test = load_split("mnist", "test", data_dir)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(48):
        Image.fromarray(test.images[i]).save(folder / f"{i:03d}_{test.labels[i]}.png")
    return folder


def readable_copy(bundle: Path, tmp_path: Path) -> Path:
    """The container's uid 10001 must read the bundle: pytest's temporary folders are 0700."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    for path in [tmp_path, copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def test_serving_image_config(serve_image):
    config = serve_image["Config"]
    assert config["User"] == "10001"
    assert config["Entrypoint"] == ["aeguard", "serve"]
    health = serve_image.get("HealthCheck") or serve_image.get("Healthcheck") or config.get("Healthcheck")
    assert health and "/v2/health/live" in " ".join(health["Test"])
    assert serve_image["Size"] < MAX_IMAGE_MB * 1e6


def test_serving_image_scores_like_aeguard_score(serve_image, mnist_bundle, pngs, tmp_path):
    from typer.testing import CliRunner

    from aeguard.cli.main import app

    bundle = readable_copy(mnist_bundle, tmp_path)
    port = free_port()
    name = f"aeguard-test-{port}"
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        *runtime_args(),
        "--env",
        f"AEGUARD_PORT={port}",
        "--env",
        "AEGUARD_DRAIN_SECONDS=0",
        "--volume",
        f"{bundle}:/bundle:ro",
        IMAGE_TAG,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert podman("container", "inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", (
                podman("logs", name, check=False).stderr
            )
            assert time.monotonic() < deadline, "the container did not become ready in 60 s"
            time.sleep(0.5)

        files = sorted(pngs.glob("*.png"))
        reply = httpx.post(
            f"{url}/v1/score/image",
            files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files],
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        served = {r["filename"]: r for r in reply.json()["results"]}

        local = CliRunner().invoke(app, ["score", str(mnist_bundle), str(pngs), "-o", str(tmp_path / "rows.csv")])
        assert local.exit_code == 0, local.output
        rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "rows.csv").open())}
        assert sorted(served) == sorted(rows) == [f.name for f in files]
        np.testing.assert_allclose(
            [served[n]["score"] for n in rows], [float(r["score"]) for r in rows.values()], rtol=1e-5
        )
        assert [served[n]["is_anomaly"] for n in rows] == [r["is_anomaly"] == "true" for r in rows.values()]

        assert podman("healthcheck", "run", name, check=False).returncode == 0  # the image's HEALTHCHECK command
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        no_torch = podman("exec", name, "python", "-c", "import torch", check=False)
        assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

        stopped = time.monotonic()
        podman("stop", "--time", "20", name)  # SIGTERM; podman would SIGKILL after 20 s
        assert time.monotonic() - stopped < 15
        state = json.loads(podman("container", "inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, podman("logs", name, check=False).stderr
    finally:
        podman("rm", "--force", name, check=False)
