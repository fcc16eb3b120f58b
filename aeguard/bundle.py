"""The bundle format: a folder with manifest.json, model.onnx, the torch weights and the validation scores.

Stdlib only, so every side (training, scoring, serving) can read it. The manifest carries a
schema version and the sha256 of every bundle file; readers refuse a bundle that does not match.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeguard.errors import BundleError, UsageError

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


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask alone must set one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp / mkdtemp (always private: 0600 / 0700) the mode any new file gets under
    the umask, so a bundle is as readable as the rest of the writer's files (a service user must read it)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        make_shareable(Path(tmp))
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
        name: {"sha256": sha256_file(bundle_dir / name), "bytes": (bundle_dir / name).stat().st_size} for name in files
    }
    write_json_atomic(bundle_dir / MANIFEST_NAME, manifest)
    return manifest


MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a real manifest is a few kB; this bounds what a tampered one costs
_SHA256 = re.compile(r"[0-9a-f]{64}")


def bundle_file(bundle_dir: Path, name: object) -> Path:
    """The path of a file the manifest names, which must be a plain name inside the bundle folder.

    A manifest is data from wherever the bundle came from: a name with a separator, '..', an absolute
    path or a NUL would let it point the reader (and its checksum messages) at any file on the machine.
    """
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or len(name) > 255
        or any(char in name for char in "/\\\0")
    ):
        raise BundleError(
            f"the manifest names a bundle file {str(name)[:80]!r}; only plain file names inside "
            "the bundle folder are allowed"
        )
    return Path(bundle_dir) / name


def read_plain_file(path: Path) -> bytes:
    """A regular file's bytes, never through a symbolic link (which could point outside the bundle)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise BundleError(f"bundle file {path} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"bundle file {path} is a symbolic link; a bundle holds plain files only") from None
        raise BundleError(f"cannot read bundle file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BundleError(f"bundle file {path} is not a regular file")
        try:
            return handle.read()
        except OSError as exc:
            raise BundleError(f"cannot read bundle file {path}: {exc.strerror or exc}") from None


def _check_files(files: object, manifest_path: Path) -> dict[str, dict]:
    if not isinstance(files, dict) or MODEL_NAME not in files:
        raise BundleError(f"{manifest_path} lists no files or no {MODEL_NAME}")
    for name, entry in files.items():
        bundle_file(manifest_path.parent, name)
        if not (
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])
        ):
            raise BundleError(f"{manifest_path}: the entry of {name!r} has no valid sha256")
    return files


# Writing a bundle folder: everything goes into a hidden sibling first and is moved into place at the end, so a
# failed, interrupted or killed writer never leaves a half-written bundle, nor destroys the previous one.


def check_out(out: Path, force: bool) -> None:
    """Refuse an occupied or unwritable --out before any training time is spent."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"bundle folder {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"bundle folder {out} already holds files; pass --force (force=True) to replace it, "
            "or choose another folder"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix=f".{out.name}.probe-", dir=out.parent).cleanup()
    except OSError as exc:
        raise UsageError(f"bundle folder {out}: cannot write in {out.parent} ({exc.strerror or exc})") from None


def prepare_staging(out: Path, force: bool) -> Path:
    check_out(out, force)
    remove_stale_staging(out)
    # Everything is built in a hidden sibling and moved into place at the end: a failed or
    # interrupted fit never leaves a half-written bundle, nor destroys the previous one.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    make_shareable(staging, directory=True)
    return staging


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove the staging folders of fits into `out` that were killed (their process is gone)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:partial|old)-([0-9]+)(?:-.*)?")
    for sibling in out.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and sibling.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def swap_into_place(staging: Path, out: Path) -> None:
    """Put the finished bundle at `out` so that a kill at any moment leaves a whole bundle there (old or new).

    Two renames (old away, new in) leave nothing at `out` between them; Linux swaps two paths in one
    step (renameat2 with RENAME_EXCHANGE). Elsewhere, or on a file system without it, the old bundle is
    moved aside first and `remove_stale_staging` cleans up after a kill.
    """
    if out.exists() and exchange_paths(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the previous bundle
        return
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
    os.replace(staging, out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS):  # a file system or kernel without it
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


@dataclass
class BundleContents:
    """A bundle in memory: its files' bytes and its manifest (without the checksums, added when written)."""

    manifest: dict[str, Any]
    files: dict[str, bytes]

    def write(self, out: Path, force: bool = False, before_swap: Callable[[Path, dict], dict] | None = None) -> dict:
        """Write the bundle folder `out` (named in the manifest) and return the manifest written.

        `before_swap(staging, manifest)` may add to the staging folder and return an updated manifest
        (the CLI writes its report and metrics there), before the finished folder is moved into place.
        """
        out = Path(out)
        staging = prepare_staging(out, force)
        try:
            for name, data in self.files.items():
                target = bundle_file(staging, name)
                target.write_bytes(data)
            manifest = write_manifest(staging, {**self.manifest, "name": out.name}, list(self.files))
            if before_swap is not None:
                manifest = write_manifest(staging, before_swap(staging, manifest), list(self.files))
            swap_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest


def read_manifest(bundle_dir: Path, verify: bool = True) -> dict[str, Any]:
    """Load and check a bundle's manifest: schema version, file names, and with `verify` every file's sha256."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir} is not a directory; pass the --out folder of `aeguard fit`")
    manifest_path = bundle_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"bundle {bundle_dir} has no {MANIFEST_NAME}; is it the --out folder of `aeguard fit`?")
    data = read_plain_file(manifest_path)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is {len(data)} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from None
    except RecursionError:
        raise BundleError(f"cannot read {manifest_path}: its JSON is nested too deeply") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} is not a JSON object")
    version = manifest.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # type(): JSON true must not pass for 1
        raise BundleError(f"{manifest_path} has schema_version {version!r}; this aeguard reads schema {SCHEMA_VERSION}")
    files = _check_files(manifest.get("files"), manifest_path)
    if verify:
        for name, entry in files.items():
            path = bundle_file(bundle_dir, name)
            if hashlib.sha256(read_plain_file(path)).hexdigest() != entry["sha256"]:
                raise BundleError(
                    f"checksum mismatch for {path}: the file differs from the manifest's sha256; "
                    "the bundle was modified or damaged"
                )
    return manifest
