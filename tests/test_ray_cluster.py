"""`aeguard score --engine ray --address` on a real two-node Ray cluster, and a worker node killed mid-run.

Both nodes run on this machine (`ray start --head`, then `ray start --address` with its own CPU and a
`worker_node` resource), each a raylet of its own with its own workers, as on two hosts; token
authentication is on, as Ray starts clusters by default.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.daemon import free_port
from tests.test_reliability_batch import rows

pytest.importorskip("ray")

BIN = Path(sys.executable).parent


def ray_command() -> str:
    return str(BIN / "ray") if (BIN / "ray").exists() else shutil.which("ray") or "ray"


class Cluster:
    """A head node and one worker node, each `ray start --block` in a session of its own, so that killing a
    node's process group takes its raylet and its workers with it."""

    def __init__(self, tmp: Path):
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"127.0.0.1:{free_port()}"
        self.logs = tmp
        common = ["--num-cpus", "1", "--disable-usage-stats", "--block"]
        port = self.address.split(":")[1]
        self.head = self._start(
            "head",
            ["--head", "--node-ip-address", "127.0.0.1", "--port", port, "--include-dashboard", "false", *common],
        )
        self._wait_for_nodes(1)
        self.worker = self._start(
            "worker", ["--address", self.address, "--node-ip-address", "127.0.0.1",
                       "--resources", '{"worker_node": 1}', *common]
        )  # fmt: skip
        self._wait_for_nodes(2)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        return subprocess.Popen(
            [ray_command(), "start", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive_nodes(self) -> int:
        status = subprocess.run(
            [ray_command(), "status", "--address", self.address], env=self.env, capture_output=True, text=True
        )
        active = status.stdout.partition("Active:")[2].partition("Pending:")[0]
        return len(re.findall(r"\bnode_[0-9a-f]+", active))

    def _wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < count:
            for process in (self.head, getattr(self, "worker", None)):
                if process is not None and process.poll() is not None:
                    raise AssertionError(f"a ray node exited:\n{self.log_text()}")
            assert time.monotonic() < deadline, f"the cluster has no {count} nodes after {timeout} s\n{self.log_text()}"
            time.sleep(1)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.logs.glob("*.log"))

    def kill(self, process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def close(self) -> None:
        for process in (self.worker, self.head):
            self.kill(process)
        # `ray start` records the head's address for `--address auto`; a killed cluster leaves it behind
        record = Path("/tmp/ray/ray_current_cluster")
        if record.is_file() and record.read_text().strip().endswith(":" + self.address.split(":")[1]):
            record.unlink()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster for the module: the node-kill test, which ends its worker node, comes last."""
    cluster = Cluster(tmp_path_factory.mktemp("ray-logs"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def pngs(data_dir, tmp_path_factory) -> Path:
    """Three thousand real digits as PNG files, for a run long enough (tens of seconds) to kill a node in."""
    from aeguard.data.catalog import load_split

    test = load_split("mnist", "test", data_dir)
    folder = tmp_path_factory.mktemp("inputs") / "pngs"
    folder.mkdir()
    for i in range(3000):
        Image.fromarray(test.images[i]).save(folder / f"{i:04d}.png")
    return folder


def score(bundle: Path, inputs: str, out: Path, env: dict, *args: str, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "aeguard.cli.main", "score", str(bundle), inputs, "-o", str(out), *args]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def data_rows(path: Path) -> int:
    try:
        return max(0, sum(1 for _ in path.open()) - 1)
    except FileNotFoundError:
        return 0


def local_rows(bundle: Path, pngs: Path, tmp_path: Path) -> list[dict]:
    out = tmp_path / "local.csv"
    done = subprocess.run(
        [sys.executable, "-m", "aeguard.cli.main", "score", str(bundle), "pngs", "-o", str(out)],
        cwd=pngs.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return rows(out)


def test_two_node_cluster_gives_the_local_rows_and_uses_both_nodes(cluster, mnist_bundle, pngs, tmp_path):
    out = tmp_path / "ray.csv"
    # relative input paths: each worker must open them against the driver's folder, not its own
    args = ("--engine", "ray", "--address", cluster.address)
    run = score(mnist_bundle, "pngs", out, cluster.env, *args, cwd=pngs.parent)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert "scored 3000 images" in stderr and "on 2 Ray nodes" in stderr
    assert rows(out) == local_rows(mnist_bundle, pngs, tmp_path)


def test_a_worker_node_killed_mid_run(cluster, mnist_bundle, pngs, tmp_path):
    """The run either finishes with every row right, or fails with a message and --resume completes it."""
    out = tmp_path / "ray.csv"
    args = ("--engine", "ray", "--address", cluster.address, "--batch-size", "32")
    run = score(mnist_bundle, "pngs", out, cluster.env, *args, cwd=pngs.parent)
    deadline = time.monotonic() + 120
    while data_rows(out) < 300:  # both nodes are at work by now
        assert run.poll() is None, run.communicate()[1]
        assert time.monotonic() < deadline, "no rows after 120 s"
        time.sleep(0.2)
    cluster.kill(cluster.worker)
    killed_at = data_rows(out)
    _, stderr = run.communicate(timeout=300)
    assert killed_at < 3000, "the run ended before the node was killed: nothing was tested"
    print(f"\nworker node killed after {killed_at} rows; the run exited {run.returncode}")
    if run.returncode != 0:
        assert "aeguard: error" in stderr, stderr
        resumed = score(mnist_bundle, "pngs", out, cluster.env, *args, "--resume", cwd=pngs.parent)
        _, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr
    else:
        assert "scored 3000 images" in stderr, stderr
    # Ray marks a node dead only after several missed health checks (seconds, longer on a loaded machine),
    # which can be after a run that needed only the surviving node has finished
    deadline = time.monotonic() + 90
    while cluster.alive_nodes() != 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert cluster.alive_nodes() == 1
    assert rows(out) == local_rows(mnist_bundle, pngs, tmp_path)
