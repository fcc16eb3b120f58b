"""Image decoding in worker processes for batch scoring. Light on purpose: numpy and Pillow only.

Opening a small image is mostly Python work inside Pillow, which holds the GIL, so threads would
not decode in parallel: processes do, one batch of paths per task. The workers come from a
forkserver that preloads this module alone, so they start in a fraction of a second (importing
onnxruntime or matplotlib there would cost half a second per run). A worker killed by a decoder
crash costs only the file that crashed it: its batch is decoded again one file at a time.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import forkserver
from pathlib import Path

import numpy as np

import aeguard
from aeguard.data.contract import Preprocessing
from aeguard.data.images import load_images
from aeguard.errors import SetupError


def _exit_with(parent_pid: int) -> None:
    """Worker initializer: end when the scoring process is gone, even if it was killed with SIGKILL.

    Otherwise a worker blocked on sending a result nobody reads would live on, and with it the
    forkserver, whose liveness pipe every worker holds open.
    """

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="aeguard-parent-watch").start()


def decode_chunk(names: list[str], prep: Preprocessing, max_pixels: int) -> list[np.ndarray | str]:
    """Decode a batch of paths in a worker: arrays, or the error message for each file that failed."""
    try:
        return load_images([Path(name) for name in names], prep, max_pixels)
    except Exception:  # noqa: BLE001 - load_image makes decoder failures ImageErrors; this is the last guard
        return [_decode_guarded(Path(name), prep, max_pixels) for name in names]


def _decode_guarded(path: Path, prep: Preprocessing, max_pixels: int) -> np.ndarray | str:
    try:
        return load_images([path], prep, max_pixels)[0]
    except Exception as exc:  # noqa: BLE001 - see decode_chunk
        return f"{path}: cannot read ({type(exc).__name__}: {exc})"


def _worker_origin() -> str:
    """Where the worker found this module: the probe that the pool started with the parent's aeguard."""
    return __file__


def _start_forkserver() -> None:
    """Start the forkserver so that it imports the same aeguard as this process, however it was started.

    Python 3.11's forkserver preloads modules before it applies the parent's sys.path, and it runs
    under `python -c`, whose sys.path starts with the working directory: run from inside a source
    checkout, the workers imported the checkout's aeguard/ instead of the installed one and failed on
    every file. PYTHONSAFEPATH drops the working directory, PYTHONPATH puts this aeguard first.
    """
    package_root = str(Path(aeguard.__file__).resolve().parent.parent)
    saved = {name: os.environ.get(name) for name in ("PYTHONSAFEPATH", "PYTHONPATH")}
    os.environ["PYTHONSAFEPATH"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, saved["PYTHONPATH"]) if p)
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class DecodePool:
    """A process pool for decoding that survives a worker killed by a crashing decoder."""

    def __init__(self, workers: int):
        self.workers = workers
        # forkserver: workers never inherit onnxruntime's threads from this process
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload([__name__])
        _start_forkserver()
        self.pool = self._new_pool()
        self._check_workers_start()

    def _check_workers_start(self) -> None:
        """A pool whose workers cannot start is a setup error, not one unreadable file after another."""
        try:
            origin = self.pool.submit(_worker_origin).result(timeout=120)
        except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, a timeout, an import error in the worker
            self.pool.shutdown(wait=False, cancel_futures=True)
            raise SetupError(
                f"the image decoding workers could not start ({type(exc).__name__}: {exc}); "
                "see the messages above for the cause"
            ) from None
        if Path(origin).resolve() != Path(__file__).resolve():
            self.pool.shutdown(wait=False, cancel_futures=True)
            raise SetupError(f"the image decoding workers imported aeguard from {origin}, not {__file__}")

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers, mp_context=self.context, initializer=_exit_with, initargs=(os.getpid(),)
        )

    def submit(self, names: list[str], *args) -> Future:
        try:
            return self.pool.submit(decode_chunk, names, *args)
        except BrokenProcessPool:
            self._restart()
            return self.pool.submit(decode_chunk, names, *args)

    def result(self, names: list[str], future: Future, *args) -> list[np.ndarray | str]:
        try:
            return future.result()
        except BrokenProcessPool:
            self._restart()
            return [self._decode_alone(name, *args) for name in names]

    def _decode_alone(self, name: str, *args) -> np.ndarray | str:
        try:
            return self.pool.submit(decode_chunk, [name], *args).result()[0]
        except BrokenProcessPool:
            self._restart()
            return f"{name}: the image decoder crashed on this file"

    def _restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
