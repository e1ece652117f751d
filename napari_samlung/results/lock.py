"""One writer per results folder at a time, across processes.

A segmentation run and an applied review both write the class map and its pyramid; interleaved,
one can revert the other's coarse levels. :func:`writing` takes an advisory lock on
``<results>/.lock`` (``flock``): the operating system drops it when the holder exits, crashed or
killed, so a dead run never blocks the folder. The file names who holds it, for the message a
second writer gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from napari_samlung.errors import SamLungError

LOCK_NAME = ".lock"


class Busy(SamLungError):
    """Another process is writing the same results folder."""


@contextlib.contextmanager
def writing(root: str | os.PathLike, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the results folder's write lock for ``what`` (a few words: "samlung segment").

    Waits up to ``wait_s`` seconds for another writer, then raises :class:`Busy` naming it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise Busy(f"{root}: the results are being written by {holder}; "
                               "try again when it has finished") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()} on {socket.gethostname()}, {_argv0()})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _argv0() -> str:
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
