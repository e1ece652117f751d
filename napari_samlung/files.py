"""Atomic file writes: readers never see a half-written file, and a crash leaves no partial one.

Everything the project writes (class-map chunks, checkpoints, GeoJSON, metrics, settings) goes
through :func:`atomic_file`: a temporary name in the target's folder, renamed over the target
only when complete. The file gets the permissions of any other file the user creates (the umask),
not the private 0600 of a temporary file, so a colleague can read shared results.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux): setting it
    to read it would let another thread create a file or folder under a mask of 0 meanwhile."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
        return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False,
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    ``fsync`` flushes the data to disk before the rename (for files whose loss costs hours, such
    as checkpoints). On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as handle:
        handle.write(data)


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = None) -> None:
    """Write ``data`` as JSON atomically (compact unless ``indent`` is given)."""
    separators = (",", ":") if indent is None else None
    with atomic_file(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=indent, separators=separators)
        if indent is not None:
            handle.write("\n")


def remove_leftovers(path: str | os.PathLike, suffix: str = ".tmp") -> None:
    """Remove what killed writes of ``path`` left beside it: ``.NAME.*SUFFIX`` files or folders
    (the temporary names of :func:`atomic_file`, or of a writer's own work folder). A write of the
    same file going on in another process loses its temporary too; two writers of one file would
    spoil it anyway."""
    path = Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*{suffix}"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
