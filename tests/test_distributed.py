"""DistributedDataParallel on CPU (gloo): a 2-process torchrun job on the real data, and --devices 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aeguard.data.catalog import load_split
from aeguard.data.splits import anomaly_labels, to_model_input
from aeguard.scoring.scorer import Scorer
from tests.test_precision import disc_folder

FIT_ARGS = [
    "fit",
    "--dataset",
    "mnist",
    "--normal",
    "0",
    "--model",
    "dense",
    "--epochs",
    "2",
    "--device",
    "cpu",
    "--no-download",
    "--seed",
    "3",
]


def run(command, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def single_process(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "bundle"
    run([sys.executable, "-m", "aeguard.cli.main", *FIT_ARGS, "--out", str(out)], out.parent)
    return out


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def torchrun_job(data_dir, tmp_path_factory):
    """One 2-process torchrun fit, shared by both tests (it is the slowest step of this module): its bundle and
    its stderr."""
    out = tmp_path_factory.mktemp("torchrun") / "bundle"
    done = run([*TORCHRUN, "-m", "aeguard.cli.main", *FIT_ARGS, "--out", str(out)], out.parent)
    return out, done.stderr


def test_torchrun_job_loads_and_scores_like_a_single_process_one(data_dir, single_process, torchrun_job):
    out, stderr = torchrun_job
    assert stderr.count("bundle written") == 1  # rank 0 alone writes and reports
    manifest = json.loads((out / "manifest.json").read_text())
    reference = json.loads((single_process / "manifest.json").read_text())
    assert manifest["training"]["processes"] == 2 and reference["training"]["processes"] == 1
    assert manifest["parity"]["max_abs_diff"] < 1e-5
    test = load_split("mnist", "test", data_dir)
    truth = anomaly_labels(test.labels, (0,))
    aurocs = [
        roc_auc_score(truth, Scorer(bundle).score_many(to_model_input(test.images))) for bundle in (out, single_process)
    ]
    assert aurocs[0] == pytest.approx(manifest["metrics"]["auroc"], abs=1e-9)
    assert aurocs[0] > 0.95 and abs(aurocs[0] - aurocs[1]) < 0.03, aurocs


def test_devices_flag_spawns_the_same_job_as_torchrun(torchrun_job, tmp_path):
    """Same seed, same sharding: --devices 2 and torchrun with 2 processes train the same weights."""
    out = tmp_path / "devices"
    run([sys.executable, "-m", "aeguard.cli.main", *FIT_ARGS, "--devices", "2", "--out", str(out)], tmp_path)
    spawned = json.loads((out / "manifest.json").read_text())
    launched = json.loads((torchrun_job[0] / "manifest.json").read_text())
    assert spawned["files"]["model.onnx"]["sha256"] == launched["files"]["model.onnx"]["sha256"]
    assert spawned["threshold"] == launched["threshold"]
    assert np.isfinite(spawned["metrics"]["auroc"])


def test_draem_trains_in_two_processes_without_layout_warnings(tmp_path):
    """draem trains channels-last on one CPU process; under DistributedDataParallel it keeps the standard layout,
    since DDP wants every gradient laid out as its parameter and warned at every step about draem's 1 x 1 head."""
    folder = disc_folder(tmp_path / "images")
    out = tmp_path / "bundle"
    args = ["fit", "--data", str(folder), "--epochs", "2", "--device", "cpu", "--devices", "2", "--out", str(out)]
    done = run([sys.executable, "-m", "aeguard.cli.main", *args], tmp_path)
    assert "bundle written" in done.stderr
    assert "strides" not in done.stderr, done.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["training"]["processes"] == 2
