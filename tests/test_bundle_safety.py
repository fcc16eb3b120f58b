"""A bundle reads only plain files inside its own folder; a bad manifest is a BundleError (exit 4), never a crash."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from aeguard.bundle import MANIFEST_NAME, read_manifest
from aeguard.cli.main import app
from aeguard.errors import BundleError
from aeguard.scoring.scorer import Scorer
from tests.bundles import edit_manifest, tiny_bundle

runner = CliRunner()


@pytest.fixture
def bundle(tmp_path):
    return tiny_bundle(tmp_path / "bundle")


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("a file outside the bundle")
    return path


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/passwd", "sub/model.onnx", "..", "a\\b", "nul\0"])
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(bundle, secret, name):
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    edit_manifest(bundle, lambda m: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(BundleError, match="only plain file names") as info:
        read_manifest(bundle)
    assert digest not in str(info.value)


def test_a_symlinked_model_is_refused_even_when_its_hash_matches(bundle, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    (bundle / "model.onnx").rename(outside)
    (bundle / "model.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        Scorer(bundle)


def test_a_checksum_mismatch_does_not_print_the_files_hash(bundle):
    model = bundle / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data + b"\0")
    with pytest.raises(BundleError, match="checksum mismatch") as info:
        read_manifest(bundle)
    assert hashlib.sha256(data + b"\0").hexdigest() not in str(info.value)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.update(schema_version=True), "schema_version True"),
        (lambda m: m.update(threshold=math.nan), "not a finite number"),
        (lambda m: m.update(threshold="0.1"), "not a finite number"),
        (lambda m: m.update(input="28x28"), "no input spec"),
        (lambda m: m["input"].update(height=True), "must be integers"),
        (lambda m: m["input"].update(height=100_000, width=100_000), "outside 1-4 channels"),
        (lambda m: m["input"].update(height=32), "takes input"),
        (lambda m: m.pop("calibration"), "calibration is missing"),
        (lambda m: m.update(calibration="yes"), "calibration is missing"),
        (lambda m: m.update(files=[]), "lists no files"),
        (lambda m: m["files"]["model.onnx"].update(sha256=7), "no valid sha256"),
    ],
)
def test_bad_manifests_are_bundle_errors(bundle, change, words):
    edit_manifest(bundle, change)
    with pytest.raises(BundleError, match=words):
        Scorer(bundle)


def test_a_deeply_nested_manifest_is_a_bundle_error(bundle):
    (bundle / MANIFEST_NAME).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        read_manifest(bundle)


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_the_cli_answers_a_bad_bundle_with_exit_4_and_one_line(bundle, tmp_path, command):
    edit_manifest(bundle, lambda m: m["input"].update(height=100_000, width=100_000))
    image = tmp_path / "a.png"
    Image.new("L", (28, 28)).save(image)
    args = [command, str(bundle), str(image)] if command == "score" else [command, str(bundle), "--data", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 4 and "outside 1-4 channels" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unreadable_validation_scores_are_a_bundle_error(tmp_path):
    from aeguard.report.evaluate import validation_scores

    bundle = tiny_bundle(tmp_path / "b")
    (bundle / "validation_scores.npy").write_bytes(b"not numpy")
    with pytest.raises(BundleError, match="validation_scores.npy"):
        validation_scores(bundle)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["schema_version", "files", "input", "threshold", "calibration", "name", "score", "model"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_manifests_give_a_bundle_or_a_bundle_error(tmp_path_factory, data):
    bundle = tiny_bundle(tmp_path_factory.mktemp("fuzz") / "b")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    for _ in range(data.draw(st.integers(1, 3))):  # replace a few fields, or parts of them, with random JSON
        field = data.draw(st.sampled_from(FIELDS))
        if isinstance(manifest.get(field), dict) and data.draw(st.booleans()):
            keys = sorted(manifest[field]) or ["x"]
            manifest[field][data.draw(st.sampled_from(keys))] = data.draw(json_values)
        else:
            manifest[field] = data.draw(json_values)
    if data.draw(st.booleans()):
        manifest = data.draw(json_values)  # not even an object
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    try:
        scorer = Scorer(bundle)
    except BundleError:
        return
    assert scorer.input_shape == (1, 28, 28) and math.isfinite(scorer.threshold)


def test_a_graph_without_an_asked_for_output_is_a_bundle_error_not_an_onnxruntime_failure(bundle, tmp_path):
    # the hand-made graph has score and error_map but no reconstruction, which evaluate's report grid needs
    scorer = Scorer(bundle)
    blank = np.zeros((2, *scorer.input_shape), np.float32)
    assert scorer.score(blank, error_maps=True).error_maps.shape == blank.shape
    with pytest.raises(BundleError, match="no 'reconstruction' output"):
        scorer.score(blank, reconstructions=True)
    for folder, value in (("normal", 0), ("anomaly", 255)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (28, 28), value).save(tmp_path / "data" / folder / f"{i}.png")
    result = runner.invoke(app, ["evaluate", str(bundle), "--data", str(tmp_path / "data")])
    assert result.exit_code == 4 and "no 'reconstruction' output" in result.output, result.output
