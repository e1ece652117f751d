"""Gather finished label blocks into whole chunks and write them from background threads.

Blocks arrive from the stitcher as device tensors. ``submit`` starts one asynchronous copy to the
host per batch, on a CUDA stream of its own so it overlaps the next batch's compute, and returns
at once; the writer thread waits for the copy, places the blocks into
chunk buffers and writes each chunk (with its pyramid samples) when its last pixel is in. A
finished chunk is appended to ``progress.log``, so an interrupted run resumes from there. When a
run stops early (cancel, Ctrl-C), :meth:`ChunkWriter.close` also writes the rows that are final in
the chunks still being filled, and records them as ``PREFIX-rows Y``: every pixel above row ``Y``
is final, so nothing but the row of tiles in flight is lost. Given a confidence map, each chunk's
confidence is written in the same task as its labels, before the chunk is logged, so what a run
takes as finished has both. Pixels
inside reviewed regions keep what the pathologist put there (``protect`` is asked for the
reviewed boxes again every few seconds; a review cannot be applied while a run holds the results
folder's lock).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from napari_samlung.geometry import Box, intersect
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import ConfidenceMap
from napari_samlung.inference.stitching import Block

if TYPE_CHECKING:
    import zarr

ChunkKey = tuple[int, int]
PROTECT_REFRESH_S = 2.0
WRITE_THREADS = 4  # chunk encoding (zstd) and file writes release the GIL


class PyramidBuffer:
    """The coarser levels of a run, assembled in memory and written once per chunk.

    A coarse chunk spans several level-0 chunks; writing each level-0 chunk's samples straight
    into it would read, decode, merge and re-encode it every time. Here a coarse chunk is written
    when every sample the run owns in it has arrived, or at :meth:`flush` (merged with what is on
    disk where the run does not cover it).
    """

    def __init__(self, classmap: ClassMap, box: Box):
        self.classmap, self.box = classmap, box
        self._chunks: dict[tuple[int, int, int], list] = {}

    def add(self, box: Box, labels: np.ndarray) -> None:
        for level, (y, x, h, w), samples in self.classmap.pyramid_samples(box, labels):
            array = self.classmap.levels[level]
            ch, cw = array.chunks
            for cy in range(y // ch, (y + h - 1) // ch + 1):
                for cx in range(x // cw, (x + w - 1) // cw + 1):
                    self._place(level, cy, cx, (y, x, h, w), samples)

    def _place(self, level: int, cy: int, cx: int, box: Box, samples: np.ndarray) -> None:
        key = (level, cy, cx)
        entry = self._chunks.get(key)
        chunk = self._chunk_box(level, cy, cx)
        if entry is None:
            owned = intersect(chunk, self._owned(level))
            entry = self._chunks[key] = [np.zeros(chunk[2:], np.uint8), np.zeros(chunk[2:], bool),
                                         owned[2] * owned[3] if owned else 0]
        part = intersect(chunk, box)
        y, x, h, w = part
        target = (slice(y - chunk[0], y - chunk[0] + h), slice(x - chunk[1], x - chunk[1] + w))
        entry[0][target] = samples[y - box[0]:y - box[0] + h, x - box[1]:x - box[1] + w]
        entry[1][target] = True
        entry[2] -= h * w
        if entry[2] <= 0:
            del self._chunks[key]
            self._write(level, chunk, entry)

    def flush(self) -> None:
        """Write every partly filled coarse chunk (merged with the data on disk)."""
        for (level, cy, cx), entry in list(self._chunks.items()):
            self._write(level, self._chunk_box(level, cy, cx), entry)
        self._chunks.clear()

    def _chunk_box(self, level: int, cy: int, cx: int) -> Box:
        array = self.classmap.levels[level]
        (ch, cw), (h, w) = array.chunks, array.shape
        return cy * ch, cx * cw, min(ch, h - cy * ch), min(cw, w - cx * cw)

    def _owned(self, level: int) -> Box:
        """The level's pixels whose level-0 sample lies in the run's box."""
        f = 1 << level
        y, x, h, w = self.box
        y0, x0, y1, x1 = -(-y // f), -(-x // f), -(-(y + h) // f), -(-(x + w) // f)
        return y0, x0, y1 - y0, x1 - x0

    def _write(self, level: int, chunk: Box, entry: list) -> None:
        values, filled, _ = entry
        y, x, h, w = chunk
        if not filled.all():
            old = np.asarray(self.classmap.levels[level][y:y + h, x:x + w])
            values = np.where(filled, values, old)
        ch, cw = self.classmap.levels[level].chunks
        self.classmap.write_chunk(level, y // ch, x // cw, values)


def read_finished(path: Path, prefix: str) -> tuple[set[ChunkKey], int]:
    """What runs under ``prefix`` (one pass) recorded as finished: whole chunks, and the class-map
    row above which everything was final when the last of them stopped early (0: none; the last
    line counts, since a run that found damage may start lower). Torn lines are ignored."""
    done: set[ChunkKey] = set()
    rows = 0
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == prefix and parts[1].isdigit() and parts[2].isdigit():
                done.add((int(parts[1]), int(parts[2])))
            elif len(parts) == 2 and parts[0] == f"{prefix}-rows" and parts[1].isdigit():
                rows = int(parts[1])
    return done, rows


def read_progress(path: Path, prefix: str) -> set[ChunkKey]:
    """Chunks recorded as written under ``prefix``."""
    return read_finished(path, prefix)[0]


class ChunkWriter:
    """Writes the class map inside ``box`` chunk by chunk from a background thread.

    ``done`` chunks and the rows above ``rows_done`` are final already and are not written. Only
    chunks inside ``settled`` (where this run's pixels equal a whole-map run's) go to the progress
    log; ``log_rows``: the run covers the whole map's width, so its finished rows may be logged.
    With ``confidence``, the blocks' confidence (``ScoredBlock``) goes there, chunk by chunk with
    the labels.
    """

    def __init__(
        self,
        classmap: ClassMap,
        box: Box,
        *,
        done: set[ChunkKey] = frozenset(),
        rows_done: int = 0,
        protect: Callable[[], list[Box]] | None = None,
        progress_log: Path | None = None,
        log_prefix: str = "s",
        log_rows: bool = False,
        settled: Box | None = None,
        target: zarr.Array | None = None,  # write here instead of level 0 (raw labels before post-processing)
        confidence: ConfidenceMap | None = None,
    ):
        self.classmap = classmap
        y, x, h, w = box
        top = max(y, rows_done)
        self.box = (top, x, y + h - top, w)  # what is left to write
        self.settled = settled if settled is not None else box
        self.log_rows = log_rows
        self._rows_in = top  # the rows above this one have all arrived
        self.done = set(done)
        self._protect = protect
        self._protect_boxes: list[Box] = []
        self._protect_read = -1e9
        self.target = target
        self.log_prefix = log_prefix
        self._log = open(progress_log, "a") if progress_log is not None else None
        self.confidence = confidence
        self._pyramid = PyramidBuffer(classmap, self.box) if target is None else None
        self._confidence_pyramid = PyramidBuffer(confidence, self.box) if confidence is not None else None
        for store, pyramid in ((classmap, self._pyramid), (confidence, self._confidence_pyramid)):
            if pyramid is not None:  # chunks written before an interruption: their coarse samples may be missing
                for key in self.done:
                    part = intersect(classmap.chunk_box(*key), self.box)
                    if part is not None:
                        pyramid.add(part, store.read(part))
        self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="samlung-write")
        self._writes: list[Future] = []
        self._buffers: dict[ChunkKey, list] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._copy_stream: torch.cuda.Stream | None = None
        self._written: list[Box] = []
        self._written_lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="samlung-writer", daemon=True)
        self._thread.start()

    # -- main-thread side -----------------------------------------------------------------------
    def submit(self, blocks: list[Block]) -> None:
        """Queue finished blocks; the device-to-host copy is started here and awaited in the thread."""
        self._raise_if_failed()
        scored = self.confidence is not None
        parts = [(b.labels, getattr(b, "confidence", None) if scored else None) for b in blocks]
        tensors = [t for pair in parts for t in pair if t is not None]
        host, event = None, None
        if tensors and tensors[0].device.type == "cuda":  # one copy per batch, awaited in the thread
            flat = torch.cat([t.reshape(-1) for t in tensors])
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(flat.device)
            # on a stream of its own, after the labels are computed, beside the next batch's compute
            self._copy_stream.wait_stream(torch.cuda.current_stream(flat.device))
            with torch.cuda.stream(self._copy_stream):
                host = flat.to("cpu", non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            flat.record_stream(self._copy_stream)
        elif tensors:
            host = tensors
        self._queue.put(([(b.box, labels is not None, confidence is not None)
                          for b, (labels, confidence) in zip(blocks, parts)], host, event))

    def take_written(self) -> list[Box]:
        """Chunk boxes written since the last call (for live display)."""
        with self._written_lock:
            out, self._written = self._written, []
        return out

    def close(self) -> None:
        """Wait for every queued block to be written; raise what the thread raised.

        A run that stopped early leaves chunks partly filled: their final rows are written too
        (merged with what is on disk) and, once on disk, logged as finished rows.
        """
        self._queue.put(None)
        self._thread.join()
        partial = self._error is None and bool(self._buffers)
        if partial:
            for key, (labels, confidence, _) in list(self._buffers.items()):
                self._write_chunk(key, self.classmap.chunk_box(*key), labels, confidence, rows=self._rows_in)
            self._buffers.clear()
        self._pool.shutdown(wait=True)
        for write in self._writes:
            if write.exception() is not None and self._error is None:
                self._error = write.exception()
        for pyramid in (self._pyramid, self._confidence_pyramid):
            if self._error is None and pyramid is not None:
                pyramid.flush()
        if self._log is not None:
            if partial and self._error is None and self.log_rows:
                self._log.write(f"{self.log_prefix}-rows {self._rows_in}\n")
            self._log.close()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the class map in {self.classmap.root} failed: {self._error}") from self._error

    # -- writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain so the producer never blocks
            try:
                self._place_all(*item)
            except BaseException as exc:  # reported on the main thread
                self._error = exc

    def _place_all(self, blocks: list[tuple[Box, bool, bool]], host, event) -> None:
        """``host``: one flat tensor of every block's labels and confidence (copied from a GPU) or a
        list of CPU tensors, in that order."""
        if event is not None:
            event.synchronize()
        flat = host.numpy() if isinstance(host, torch.Tensor) else None
        arrays = iter(host) if isinstance(host, list) else None
        offset = 0

        def take(box: Box, present: bool) -> np.ndarray | None:
            nonlocal offset
            if not present:
                return None
            if flat is None:
                return next(arrays).numpy()
            n = box[2] * box[3]
            offset += n
            return flat[offset - n:offset].reshape(box[2], box[3])

        for box, has_labels, has_confidence in blocks:
            labels = take(box, has_labels)
            self._place(box, labels, take(box, has_confidence))
            if box[1] <= self.box[1] and box[1] + box[3] >= self.box[1] + self.box[3]:  # a full-width block
                self._rows_in = max(self._rows_in, box[0] + box[2])

    def _place(self, box: Box, labels: np.ndarray | None, confidence: np.ndarray | None = None) -> None:
        for key in self.classmap.chunks_in(box):
            if key in self.done:
                continue
            chunk = self.classmap.chunk_box(*key)
            part = intersect(chunk, box)
            part = part and intersect(part, self.box)
            if part is None:
                continue
            entry = self._buffers.get(key)
            if entry is None:
                need = intersect(chunk, self.box)
                scores = np.zeros(chunk[2:], np.uint8) if self.confidence is not None else None
                entry = self._buffers[key] = [np.zeros(chunk[2:], np.uint8), scores, need[2] * need[3]]
            y, x, h, w = part
            into = (slice(y - chunk[0], y - chunk[0] + h), slice(x - chunk[1], x - chunk[1] + w))
            source = (slice(y - box[0], y - box[0] + h), slice(x - box[1], x - box[1] + w))
            if labels is not None:
                entry[0][into] = labels[source]
            if confidence is not None and entry[1] is not None:
                entry[1][into] = confidence[source]
            entry[2] -= h * w
            if entry[2] == 0:
                del self._buffers[key]
                self._write_chunk(key, chunk, entry[0], entry[1])

    def _protected(self) -> list[Box]:
        """Reviewed boxes, re-read every few seconds (applying a review waits for the folder's lock,
        but a region removed meanwhile is then segmented again)."""
        if self._protect is not None and time.monotonic() - self._protect_read > PROTECT_REFRESH_S:
            self._protect_boxes = list(self._protect())
            self._protect_read = time.monotonic()
        return self._protect_boxes

    def _write_chunk(self, key: ChunkKey, chunk: Box, labels: np.ndarray, confidence: np.ndarray | None,
                     rows: int | None = None) -> None:
        """Write a chunk's pixels inside the box (with ``rows``: only those above that row; the
        chunk is then not finished), and their confidence when the run keeps it."""
        box = self.box if rows is None else (self.box[0], self.box[1], rows - self.box[0], self.box[3])
        inside = intersect(chunk, box) if box[2] > 0 else None
        if inside is None:
            return
        keep = [b for b in (intersect(chunk, p) for p in self._protected()) if b is not None]
        if inside != chunk or keep:
            labels = _merged(labels, self._read(chunk), chunk, inside, keep)
            if confidence is not None:
                confidence = _merged(confidence, self.confidence.read(chunk), chunk, inside, keep)
        finished = rows is None
        if confidence is not None:
            self._confidence_pyramid.add(chunk, confidence)
        if self.target is not None:
            y, x, h, w = chunk
            self.target[y:y + h, x:x + w] = labels
            if confidence is not None:
                self.confidence.write_chunk(0, *key, confidence)
            self._finished(key, chunk, finished)
        else:
            self._pyramid.add(chunk, labels)
            write = self._pool.submit(self._write_level0, key, labels, confidence)
            write.add_done_callback(
                lambda f, key=key, chunk=chunk: f.exception() or self._finished(key, chunk, finished))
            self._writes.append(write)
            self._writes = [w for w in self._writes if not w.done() or w.exception()]

    def _write_level0(self, key: ChunkKey, labels: np.ndarray, confidence: np.ndarray | None) -> None:
        """One chunk's labels and confidence, both on disk before the chunk counts as written."""
        if confidence is not None:
            self.confidence.write_chunk(0, *key, confidence)
        self.classmap.write_chunk(0, *key, labels)

    def _finished(self, key: ChunkKey, chunk: Box, finished: bool = True) -> None:
        """A chunk is on disk: log it for resume (when whole and settled), report it for display."""
        with self._written_lock:
            if finished and self._log is not None and intersect(chunk, self.settled) == chunk:
                self._log.write(f"{self.log_prefix} {key[0]} {key[1]}\n")
                self._log.flush()
            if finished:
                self.done.add(key)
            self._written.append(chunk)

    def _read(self, chunk: Box) -> np.ndarray:
        if self.target is not None:
            y, x, h, w = chunk
            return np.asarray(self.target[y:y + h, x:x + w])
        return self.classmap.read(chunk)


def _merged(new: np.ndarray, old: np.ndarray, chunk: Box, inside: Box, keep: list[Box]) -> np.ndarray:
    """A chunk's ``old`` values with ``new`` inside the run's part of it, except in ``keep`` (reviewed
    pixels stay as the pathologist left them)."""
    merged = old.copy()
    y, x, h, w = inside
    sl = (slice(y - chunk[0], y - chunk[0] + h), slice(x - chunk[1], x - chunk[1] + w))
    merged[sl] = new[sl]
    for y, x, h, w in keep:
        sl = (slice(y - chunk[0], y - chunk[0] + h), slice(x - chunk[1], x - chunk[1] + w))
        merged[sl] = old[sl]
    return merged


def remove_progress(path: Path) -> None:
    """Forget a finished run's progress log."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
