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
from pathlib import Path

import numpy as np

from aeguard.data.images import load_image
from aeguard.errors import ImageError


def _decode(path: Path, height: int, width: int, max_pixels: int) -> np.ndarray | str:
    try:
        return load_image(path, height, width, max_pixels)
    except ImageError as exc:
        return str(exc)


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


def decode_chunk(names: list[str], height: int, width: int, max_pixels: int) -> list[np.ndarray | str]:
    """Decode a batch of paths in a worker: arrays, or the error message for each file that failed."""
    return [_decode(Path(name), height, width, max_pixels) for name in names]


class DecodePool:
    """A process pool for decoding that survives a worker killed by a crashing decoder."""

    def __init__(self, workers: int):
        self.workers = workers
        # forkserver: workers never inherit onnxruntime's threads from this process
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload([__name__])
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_exit_with,
                                   initargs=(os.getpid(),))

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
