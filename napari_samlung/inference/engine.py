"""Segment a region or a whole slide into the on-disk class map.

The pipeline: plan the tile grid at the model's resolution, skip tiles without tissue, read and
decode tiles in worker threads ahead of the device, run the model batch by batch, blend the
tiles' probabilities on the device (``stitching.py``), and write whole chunks from a background
thread (``writer.py``). ``iter_segment`` is a generator of :class:`Progress` events (the napari
widget runs it in a thread worker); ``segment`` wraps it with a callback (the CLI's tqdm bar).

A whole-slide run records its settings and the chunks it finished; rerunning it with the same
settings resumes, and a complete class map is only recomputed when asked (``overwrite``).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np
import torch

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box, intersect
from napari_samlung.results.classmap import ClassMap, now
from napari_samlung.inference.loader import TileLoader
from napari_samlung.inference.postprocess import halo, morphological_cleanup
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.inference.stitching import Block, Stitcher, TileKind
from napari_samlung.inference.tiling import TileGrid
from napari_samlung.inference.classmap_writer import ChunkWriter, read_progress, remove_progress


class SegmentationError(SamLungError):
    """Settings or inputs that cannot be segmented (the message says which and why)."""


class AlreadyComplete(SegmentationError):
    """The slide's class map is complete and ``overwrite`` was not given."""


@dataclass
class SegmentationParams:
    """How to tile and post-process; ``None`` means the model's own value."""

    tile_size: int | None = None  # default: the model's training tile size
    overlap: int | None = None  # default: tile_size // 8
    batch_size: int = 8
    target_mpp: float | None = None  # default: the model's microns per pixel
    skip_background: bool = True
    tissue_threshold: float = 0.02  # a tile with less tissue than this fraction is background
    postprocess: bool = False
    kernel_size: int = 15
    iterations: int = 5
    workers: int | None = None  # tile-reading threads; default: CPU count, at most 8

    def validate(self) -> None:
        if self.tile_size is not None and (self.tile_size < 32 or self.tile_size % 16):
            raise SegmentationError(f"must be a multiple of 16 of at least 32, got {self.tile_size}", param="tile_size")
        if self.overlap is not None and self.overlap < 0:
            raise SegmentationError(f"must not be negative, got {self.overlap}", param="overlap")
        if self.batch_size < 1:
            raise SegmentationError(f"must be at least 1, got {self.batch_size}", param="batch_size")
        if self.target_mpp is not None and not self.target_mpp > 0:
            raise SegmentationError(f"must be positive, got {self.target_mpp}", param="target_mpp")
        if not 0 <= self.tissue_threshold <= 1:
            raise SegmentationError(f"must be between 0 and 1, got {self.tissue_threshold}", param="tissue_threshold")
        if self.kernel_size < 1 or self.iterations < 0:
            raise SegmentationError("post-processing needs {opt:kernel_size} >= 1 and {opt:iterations} >= 0")


@dataclass
class Plan:
    """Where and how a run segments: all in class-map pixels unless named ``slide``."""

    scale: float  # level-0 slide pixels per class-map pixel
    slide_shape: tuple[int, int]  # level 0, (h, w)
    shape: tuple[int, int]  # class-map shape
    box: Box  # the class-map box to segment
    tile: int
    overlap: int
    slide_mpp: float | None
    target_mpp: float | None
    whole_slide: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """One step of a run, for progress bars and live display."""

    phase: str  # 'segment' or 'postprocess'
    done: int
    total: int
    written: list[Box] = field(default_factory=list)  # class-map boxes written since the last event


@dataclass
class SegmentationResult:
    root: Path
    status: str  # 'complete', 'cancelled' or 'skipped' (already complete)
    plan: Plan | None
    tiles: dict[str, int] = field(default_factory=dict)  # counts by kind
    seconds: float = 0.0

    @property
    def classmap(self) -> ClassMap:
        return ClassMap.open(self.root)


def plan_segmentation(slide, predictor: TilePredictor, params: SegmentationParams, region: Box | None = None) -> Plan:
    """Resolution, class-map shape and the box to segment. ``region`` is (y, x, h, w) at level 0."""
    params.validate()
    notes = []
    slide_mpp = slide.mpp
    target_mpp = params.target_mpp if params.target_mpp is not None else predictor.mpp
    if slide_mpp is None or target_mpp is None:
        scale = 1.0
        if slide_mpp is None:
            notes.append(f"{slide.path.name}: microns per pixel unknown (give {{opt:mpp}}); segmenting at level 0")
    else:
        scale = target_mpp / slide_mpp
        if scale < 0.95:
            notes.append(f"{slide.path.name}: the model's resolution ({target_mpp:g} um/px) is finer than the "
                         f"slide's ({slide_mpp:g} um/px); tiles are upsampled")
    h0, w0 = slide.shape
    shape = (max(1, round(h0 / scale)), max(1, round(w0 / scale)))
    tile = params.tile_size or predictor.tile_size
    overlap = params.overlap if params.overlap is not None else tile // 8
    if overlap >= tile / 2:
        raise SegmentationError(f"must be less than half the tile size ({tile}), got {overlap}", param="overlap")
    if region is None:
        box = (0, 0, *shape)
    else:
        y, x, h, w = region
        if h <= 0 or w <= 0:
            raise SegmentationError(f"width and height must be positive, got {w} x {h}", param="region")
        inside = intersect((y, x, h, w), (0, 0, h0, w0))
        if inside is None:
            raise SegmentationError(f"(x={x}, y={y}, w={w}, h={h}) lies outside the slide "
                                    f"({w0} x {h0} pixels at level 0)", param="region")
        if inside != (y, x, h, w):
            notes.append("{opt:region} reaches past the slide; clipped to the slide")
        y, x, h, w = inside
        y0, x0 = math.floor(y / scale), math.floor(x / scale)
        y1, x1 = min(shape[0], math.ceil((y + h) / scale)), min(shape[1], math.ceil((x + w) / scale))
        box = (y0, x0, max(1, y1 - y0), max(1, x1 - x0))
    whole = box == (0, 0, *shape)
    return Plan(scale, (h0, w0), shape, box, tile, overlap, slide_mpp, target_mpp, whole, notes)


def _job(plan: Plan, predictor: TilePredictor, params: SegmentationParams) -> dict[str, Any]:
    """What identifies a whole-slide run for resuming (batch size and threads do not matter)."""
    return {
        "box": list(plan.box), "tile": plan.tile, "overlap": plan.overlap, "scale": plan.scale,
        "model": predictor.info, "skip_background": params.skip_background,
        "tissue_threshold": params.tissue_threshold,
        "postprocess": [params.kernel_size, params.iterations] if params.postprocess else None,
    }


def _open_classmap(root: Path, slide, predictor: TilePredictor, plan: Plan, overwrite: bool) -> ClassMap:
    """Open the slide's class map if it fits this run, else create it (never dropping corrections)."""
    slide_meta = {"path": str(Path(slide.path).resolve()), "name": slide.name, "format": slide.format,
                  "shape": list(slide.shape), "mpp": slide.mpp}
    model_meta = {**predictor.info, "mpp": plan.target_mpp, "tile": plan.tile, "num_classes": predictor.num_classes}
    if ClassMap.exists(root):
        cm = ClassMap.open(root, mode="r+")
        fits = (tuple(cm.shape) == plan.shape and math.isclose(cm.scale, plan.scale, rel_tol=1e-6)
                and cm.num_classes == predictor.num_classes)
        if fits:
            return cm
        if cm.reviewed:
            raise SegmentationError(
                f"{root}: the existing class map ({cm.shape[1]} x {cm.shape[0]}, {cm.num_classes} classes) holds "
                f"{len(cm.reviewed)} reviewed region(s) and does not fit this run's resolution or classes; "
                "export the corrections, then move that folder away")
        if not overwrite and cm.status != "empty":
            raise SegmentationError(
                f"{root}: the existing class map was made at another resolution or with other classes; "
                "use {opt:overwrite} to replace it")
    return ClassMap.create(root, plan.shape, scale=plan.scale, num_classes=predictor.num_classes,
                           slide=slide_meta, model=model_meta, overwrite=True)


def iter_segment(
    slide,
    predictor: TilePredictor,
    root: str | os.PathLike,
    params: SegmentationParams | None = None,
    *,
    region: Box | None = None,
    overwrite: bool = False,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, SegmentationResult]:
    """Segment ``region`` (level-0 (y, x, h, w)) or the whole slide into ``root/classmap.zarr``.

    Yields :class:`Progress` after every batch; returns a :class:`SegmentationResult`.
    Setting ``cancel`` stops within one batch; a cancelled whole-slide run resumes later.
    """
    params = params or SegmentationParams()
    start = time.perf_counter()
    root = Path(root)
    plan = plan_segmentation(slide, predictor, params, region)
    cm = _open_classmap(root, slide, predictor, plan, overwrite)
    log_path = root / "progress.log"
    job = _job(plan, predictor, params)
    if plan.whole_slide:
        if cm.status == "complete" and not overwrite:
            raise AlreadyComplete(f"{root}: already complete (use {{opt:overwrite}} to segment again)")
        unfinished = cm.meta.get("job") if cm.status == "incomplete" else None
        if unfinished not in (None, job) and not overwrite:
            raise SegmentationError(
                f"{root}: an unfinished run with other settings is there; rerun it with the same settings to "
                "resume, or use {opt:overwrite}")
        resuming = unfinished == job and not overwrite
        if not resuming:
            remove_progress(log_path)
        cm.update_meta(status="incomplete", job=job)
        done = read_progress(log_path, "s") if resuming else set()
    else:
        done = set()
    def protect() -> list[Box]:
        cm.refresh()
        return cm.reviewed_boxes()

    grid = TileGrid(plan.box, plan.tile, plan.overlap)
    tissue = slide.tissue() if params.skip_background else None
    kinds = _classify(grid, cm, plan, done, tissue, params.tissue_threshold)
    counts = {k.value: sum(1 for v in kinds.values() if v is k) for k in TileKind}
    cancelled = False

    if params.postprocess:
        raw = cm.group["raw"] if "raw" in cm.group else cm.group.create_array(
            "raw", shape=plan.shape, chunks=cm.chunk, dtype="uint8", fill_value=0)
        writer = ChunkWriter(cm, plan.box, done=done, target=raw,
                             progress_log=log_path if plan.whole_slide else None, log_prefix="s")
    else:
        writer = ChunkWriter(cm, plan.box, done=done, protect=protect,
                             progress_log=log_path if plan.whole_slide else None, log_prefix="s")
    try:
        yield from _run_tiles(slide, predictor, grid, kinds, plan, params, writer, cancel)
    except _Cancelled:
        cancelled = True
    finally:
        writer.close()
    if not cancelled and params.postprocess:
        try:
            for step in _postprocess(cm, raw, plan, params, protect, log_path):
                yield step
                if cancel is not None and cancel.is_set():
                    raise _Cancelled
        except _Cancelled:
            cancelled = True
    if cancelled:
        return SegmentationResult(root, "cancelled", plan, counts, time.perf_counter() - start)
    record = {"box": list(plan.box), "when": now(), "model": predictor.info}
    if plan.whole_slide:
        cm.update_meta(status="complete", job=None, segmented=[record])
        remove_progress(log_path)
    else:
        cm.update_meta(status=cm.status if cm.status in ("complete", "incomplete") else "partial",
                       segmented=cm.meta.get("segmented", []) + [record])
    return SegmentationResult(root, "complete", plan, counts, time.perf_counter() - start)


def segment(
    slide,
    predictor: TilePredictor,
    root: str | os.PathLike,
    params: SegmentationParams | None = None,
    *,
    region: Box | None = None,
    overwrite: bool = False,
    cancel: threading.Event | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> SegmentationResult:
    """:func:`iter_segment` with a callback for each progress event."""
    gen = iter_segment(slide, predictor, root, params, region=region, overwrite=overwrite, cancel=cancel)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


class _Cancelled(Exception):
    pass


def _classify(grid: TileGrid, cm: ClassMap, plan: Plan, done: set, tissue, threshold: float) -> dict:
    """Kind of every tile, in row-major order."""
    kinds: dict[tuple[int, int], TileKind] = {}
    for r, c in grid.tiles():
        box = grid.tile_box(r, c)
        inside = intersect(box, plan.box)
        if done and all(k in done for k in cm.chunks_in(inside)):
            kinds[r, c] = TileKind.DONE
            continue
        if tissue is not None:
            s = plan.scale
            y, x = box[0] * s, box[1] * s
            area = intersect((int(y), int(x), math.ceil(box[2] * s), math.ceil(box[3] * s)), (0, 0, *plan.slide_shape))
            if area is None or tissue.fraction(*area) < threshold:
                kinds[r, c] = TileKind.BACKGROUND
                continue
        kinds[r, c] = TileKind.MODEL
    return kinds


def _run_tiles(slide, predictor: TilePredictor, grid: TileGrid, kinds: dict, plan: Plan,
               params: SegmentationParams, writer: ChunkWriter, cancel: threading.Event | None):
    """The main loop: batches of model tiles, with the tiles between them, into the stitcher."""
    stitcher = Stitcher(grid, predictor.num_classes, predictor.device)
    order = list(grid.tiles())
    model_tiles = [(i, rc) for i, rc in enumerate(order) if kinds[rc] is TileKind.MODEL]
    s, tile = plan.scale, plan.tile

    def read(item) -> np.ndarray:
        y, x, _, _ = grid.tile_box(*item[1])
        return slide.read_scaled(y * s, x * s, tile, tile, s)

    cuda = predictor.device.type == "cuda"
    workers = params.workers or min(8, os.cpu_count() or 2)
    loader = TileLoader(model_tiles, read, tile=tile, batch_size=params.batch_size, workers=workers,
                        pin_memory=cuda, full_batches=predictor.compiled)
    pointer = 0

    def advance(until: int, probs: torch.Tensor | None, batch: dict) -> list[Block]:
        nonlocal pointer
        blocks: list[Block] = []
        while pointer <= until:
            rc = order[pointer]
            kind = kinds[rc]
            blocks += stitcher.add(*rc, kind, probs[batch[pointer]] if kind is TileKind.MODEL else None)
            pointer += 1
        return blocks

    for items, tiles in loader:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        probs = stitcher.probabilities(predictor(tiles))
        loader.release(predictor.input_copied)
        batch = {i: j for j, (i, _) in enumerate(items)}
        writer.submit(advance(items[-1][0], probs, batch))
        yield Progress("segment", pointer, len(order), writer.take_written())
    if cancel is not None and cancel.is_set():
        raise _Cancelled
    writer.submit(advance(len(order) - 1, None, {}))
    yield Progress("segment", pointer, len(order), writer.take_written())


def _postprocess(cm: ClassMap, raw, plan: Plan, params: SegmentationParams, protect, log_path: Path):
    """Open/close the raw labels block by block (with enough context) into the class map."""
    pad = halo(params.kernel_size, params.iterations)
    done = read_progress(log_path, "p") if plan.whole_slide else set()
    writer = ChunkWriter(cm, plan.box, done=done, protect=protect,
                         progress_log=log_path if plan.whole_slide else None, log_prefix="p")
    keys = [k for k in cm.chunks_in(plan.box) if k not in done]
    try:
        for n, key in enumerate(keys, 1):
            part = intersect(cm.chunk_box(*key), plan.box)
            y, x, h, w = part
            context = intersect((y - pad, x - pad, h + 2 * pad, w + 2 * pad), plan.box)
            cy, cx, ch, cw = context
            labels = morphological_cleanup(np.asarray(raw[cy:cy + ch, cx:cx + cw]), params.kernel_size,
                                           params.iterations)
            block = labels[y - cy:y - cy + h, x - cx:x - cx + w]
            writer.submit([Block(part, torch.from_numpy(np.ascontiguousarray(block)))])
            yield Progress("postprocess", n, len(keys), writer.take_written())
    finally:
        writer.close()
