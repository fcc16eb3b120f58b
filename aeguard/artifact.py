"""The bundle format: a directory with manifest.json, model.onnx and the torch weights.

Stdlib only, so every side (training, scoring, serving) can read it. The manifest carries a
schema version and the sha256 of every bundle file; readers refuse a bundle that does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from aeguard.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
WEIGHTS_NAME = "weights.pt"
VALIDATION_SCORES_NAME = "validation_scores.npy"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(bundle_dir: Path, manifest: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Record schema version and checksums of `files` (names inside bundle_dir), then write the manifest."""
    bundle_dir = Path(bundle_dir)
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["files"] = {
        name: {"sha256": sha256_file(bundle_dir / name), "bytes": (bundle_dir / name).stat().st_size}
        for name in files
    }
    write_json_atomic(bundle_dir / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(bundle_dir: Path, verify: bool = True) -> dict[str, Any]:
    """Load and check a bundle's manifest: schema version, and with `verify` every file's sha256."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir} is not a directory; pass the --out folder of `aeguard fit`")
    manifest_path = bundle_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"bundle {bundle_dir} has no {MANIFEST_NAME}; is it the --out folder of `aeguard fit`?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} is not a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path} has schema_version {version!r}; this aeguard reads schema {SCHEMA_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or MODEL_NAME not in files:
        raise BundleError(f"{manifest_path} lists no files or no {MODEL_NAME}")
    if verify:
        for name, entry in files.items():
            path = bundle_dir / name
            if not path.is_file():
                raise BundleError(f"bundle file {path} is missing")
            actual = sha256_file(path)
            if actual != entry.get("sha256"):
                raise BundleError(
                    f"checksum mismatch for {path}: manifest says {entry.get('sha256')}, file has {actual}; "
                    "the bundle was modified or damaged"
                )
    return manifest
