import json

import pytest

from aeguard.bundle import SCHEMA_VERSION, read_manifest, write_manifest
from aeguard.errors import BundleError


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "weights.pt").write_bytes(b"weights")
    write_manifest(tmp_path, {"threshold": 1.0}, ["model.onnx", "weights.pt"])
    return tmp_path


def test_manifest_records_schema_and_checksums(bundle):
    manifest = read_manifest(bundle)
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert set(manifest["files"]) == {"model.onnx", "weights.pt"}
    assert len(manifest["files"]["model.onnx"]["sha256"]) == 64


def test_tampered_file_is_refused(bundle):
    (bundle / "weights.pt").write_bytes(b"weightz")
    with pytest.raises(BundleError, match="checksum mismatch for .*weights.pt"):
        read_manifest(bundle)


def test_missing_file_is_refused(bundle):
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        read_manifest(bundle)


def test_unknown_schema_is_refused(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema_version"):
        read_manifest(bundle)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_unreadable_manifest_is_refused(bundle, content):
    (bundle / "manifest.json").write_text(content)
    with pytest.raises(BundleError):
        read_manifest(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        read_manifest(tmp_path)
