"""Segment a region or a whole slide into the on-disk class map.

The pipeline: plan the tile grid at the model's resolution, skip tiles without tissue, read and
decode tiles in worker threads ahead of the device, run the model batch by batch, blend the
tiles' probabilities on the device (``stitching.py``), and write whole chunks from a background
thread (``writer.py``). ``iter_segment`` is a generator of :class:`Progress` events (the napari
widget runs it in a thread worker); ``segment`` wraps it with a callback (the CLI's tqdm bar).

Every run plans first (:func:`plan_segmentation`, no model needed): resolution, class-map size,
the tile grid; an absurd plan (upsampling the finest level more than 2x) is refused before any
work. Runs record their settings and what they finished (whole chunks, and on an interruption the
finished rows), so a rerun with the same settings resumes, whether the earlier run was cancelled,
interrupted or killed. Region runs and whole-slide runs tile on one grid and share finished chunks.
A complete class map is only recomputed when asked (``overwrite``).

Beside the class map, every run keeps the confidence of each pixel (``results/confidence.py``),
computed from the blended probabilities before the arg-max and written chunk by chunk with the
labels. Results made before confidence maps were kept get one on their next run, which then
segments its whole box again (their finished chunks have no confidence to keep).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Protocol

import numpy as np
import torch

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box, intersect
from napari_samlung.results.classmap import ClassMap, ClassMapError, now
from napari_samlung.results.confidence import ConfidenceMap, has_confidence
from napari_samlung.results.lock import writing
from napari_samlung.inference.confidence import ConfidenceStitcher
from napari_samlung.inference.loader import TileLoader
from napari_samlung.inference.postprocess import halo, morphological_cleanup
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.inference.stitching import Block, TileKind
from napari_samlung.inference.tiling import TileGrid, aligned_box, settled_box
from napari_samlung.inference.classmap_writer import ChunkWriter, read_finished, read_progress, remove_progress

MAX_TILE = 4096  # a tile's float batch grows with its area: 65,536 px tiles would need ~100 GB
MAX_UPSAMPLING = 2.0  # finer than this many times the slide's finest level is refused unless allowed


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
    allow_upsampling: bool = False  # segment at a resolution more than 2x finer than the slide's

    def validate(self) -> None:
        if self.tile_size is not None and (self.tile_size < 32 or self.tile_size % 16 or self.tile_size > MAX_TILE):
            raise SegmentationError(f"must be a multiple of 16 from 32 to {MAX_TILE}, got {self.tile_size}",
                                    param="tile_size")
        if self.overlap is not None and self.overlap < 0:
            raise SegmentationError(f"must not be negative, got {self.overlap}", param="overlap")
        if self.batch_size < 1:
            raise SegmentationError(f"must be at least 1, got {self.batch_size}", param="batch_size")
        if self.target_mpp is not None and not (self.target_mpp > 0 and math.isfinite(self.target_mpp)):
            raise SegmentationError(f"must be positive, got {self.target_mpp}", param="target_mpp")
        if not 0 <= self.tissue_threshold <= 1:
            raise SegmentationError(f"must be between 0 and 1, got {self.tissue_threshold}", param="tissue_threshold")
        if self.kernel_size < 1 or self.iterations < 0:
            raise SegmentationError("post-processing needs {opt:kernel_size} >= 1 and {opt:iterations} >= 0")


class ModelGeometry(Protocol):
    """What planning needs of a model: a :class:`TilePredictor`, or :class:`ModelSpec` before loading."""

    tile_size: int
    mpp: float | None


@dataclass(frozen=True)
class ModelSpec:
    """A model's tile side and resolution, known before its weights are loaded (from its config)."""

    tile_size: int
    mpp: float | None
    preset: str | None = None
    num_classes: int = 1  # classes besides background: the class map new results get


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

    @property
    def grid_box(self) -> Box:
        """The box of the class map's tiles that touch :attr:`box` (the map's one grid)."""
        return aligned_box(self.box, self.shape, self.tile, self.overlap)

    @property
    def upsampling(self) -> float:
        """How many times finer than the slide's level 0 the class map is (below 1: downsampling)."""
        return 1.0 / self.scale

    def grid(self) -> TileGrid:
        return TileGrid(self.grid_box, self.tile, self.overlap)


@dataclass
class PlanSummary:
    """What a run will do, for a person to read before it starts (``--dry-run``, the widget)."""

    plan: Plan
    tiles: dict[str, int]  # by kind: 'model' (tissue), 'background', 'done' (kept from earlier runs)

    @property
    def total(self) -> int:
        return sum(self.tiles.values())

    def lines(self) -> list[str]:
        p = self.plan
        mpp = f"{p.target_mpp:g} um/px" if p.target_mpp and p.slide_mpp else "the slide's level 0"
        slide_mpp = f"{p.slide_mpp:g} um/px" if p.slide_mpp else "unknown um/px"
        factor = (f"upsampled {p.upsampling:.3g}x" if p.upsampling > 1.0001 else
                  f"downsampled {1 / p.upsampling:.3g}x" if p.upsampling < 0.9999 else "at its own resolution")
        y, x, h, w = p.box
        return [
            f"slide {p.slide_shape[1]} x {p.slide_shape[0]} px at {slide_mpp}; segmented at {mpp} ({factor})",
            f"class map {p.shape[1]} x {p.shape[0]} px; this run: {w} x {h} px at ({x}, {y})",
            f"tiles of {p.tile} px, overlap {p.overlap}: {self.total} in all, {self.tiles.get('model', 0)} with "
            f"tissue for the model, {self.tiles.get('background', 0)} without, {self.tiles.get('done', 0)} already done",
        ] + p.notes


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


def plan_segmentation(slide, model: ModelGeometry, params: SegmentationParams, region: Box | None = None) -> Plan:
    """Resolution, class-map shape and the box to segment. ``region`` is (y, x, h, w) at level 0.

    ``model`` is the predictor, or a :class:`ModelSpec` when planning before the model loads.
    Raises :class:`SegmentationError` for a plan that upsamples the slide more than
    :data:`MAX_UPSAMPLING` times (a wrong resolution somewhere) unless ``params.allow_upsampling``.
    """
    params.validate()
    notes = []
    slide_mpp = slide.mpp
    target_mpp = params.target_mpp if params.target_mpp is not None else model.mpp
    if slide_mpp is None or target_mpp is None:
        scale = 1.0
        if slide_mpp is None:
            why = f" ({slide.mpp_note})" if getattr(slide, "mpp_note", None) else ""
            notes.append(f"{slide.path.name}: microns per pixel unknown{why}; segmenting at level 0 "
                         "(give {opt:mpp} to segment at the model's resolution)")
    else:
        scale = target_mpp / slide_mpp
        if 1 / scale > MAX_UPSAMPLING and not params.allow_upsampling:
            raise SegmentationError(
                f"{slide.path.name}: segmenting at {target_mpp:g} um/px would upsample the slide's finest level "
                f"({slide_mpp:g} um/px) {1 / scale:.3g} times; check the slide's {{opt:mpp}} or "
                f"{{opt:target_mpp}}, or allow it with {{opt:allow_upsampling}}")
        if scale < 0.95:
            notes.append(f"{slide.path.name}: the model's resolution ({target_mpp:g} um/px) is finer than the "
                         f"slide's ({slide_mpp:g} um/px); tiles are upsampled")
    h0, w0 = slide.shape
    shape = (max(1, round(h0 / scale)), max(1, round(w0 / scale)))
    tile = params.tile_size or model.tile_size
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


def count_tiles(slide, plan: Plan, params: SegmentationParams, root: str | os.PathLike | None = None,
                job: dict[str, Any] | None = None) -> PlanSummary:
    """How many of the plan's tiles hold tissue, and (given the results folder and the run's
    :func:`run_key`) how many are already done, without loading a model."""
    done, rows = set(), 0
    if root is not None and job is not None and ClassMap.exists(root):
        cm = ClassMap.open(root)
        if cm.meta.get("job") == job and tuple(cm.shape) == plan.shape and has_confidence(cm) and not (
                params.postprocess and not plan.whole_slide):  # as _run: such region runs reuse nothing
            done, rows = read_finished(Path(root) / "progress.log", "s")
            kinds = _classify(plan.grid(), cm, plan, done, rows, _tissue(slide, params), params.tissue_threshold)
            return PlanSummary(plan, _count(kinds))
    kinds = _classify(plan.grid(), None, plan, set(), 0, _tissue(slide, params), params.tissue_threshold)
    return PlanSummary(plan, _count(kinds))


def _level0(damaged: list[tuple[int, int, int, str]]) -> set[tuple[int, int]]:
    return {(cy, cx) for level, cy, cx, _ in damaged if level == 0}


def _log_all_but(log_path: Path, cm: ClassMap, box: Box, bad: set) -> None:
    """A progress log that names every chunk of ``box`` but ``bad`` as finished, for both passes."""
    keys = [k for k in cm.chunks_in(box) if k not in bad]
    log_path.write_text("".join(f"{prefix} {cy} {cx}\n" for prefix in ("s", "p") for cy, cx in keys))


def _settled(grid_box: Box, plan: Plan) -> Box:
    """Where a region run's pixels are final for every run of its settings: inside its box, away
    from the grid's edges inside the map. An empty box when there is no such part."""
    settled = settled_box(grid_box, plan.shape, plan.overlap)
    return (settled and intersect(settled, plan.box)) or (0, 0, 0, 0)


def _count(kinds: dict) -> dict[str, int]:
    return {k.value: sum(1 for v in kinds.values() if v is k) for k in TileKind}


def _tissue(slide, params: SegmentationParams):
    return slide.tissue() if params.skip_background else None


def _model_identity(info: dict[str, Any]) -> dict[str, Any]:
    """The model by content: a file's path is left out where its digest is known, so a copy of the
    same checkpoint elsewhere resumes the same run."""
    return {k: v for k, v in info.items() if not (isinstance(v, str) and f"{k}_sha256" in info)}


def run_key(plan: Plan, model_info: dict[str, Any], params: SegmentationParams) -> dict[str, Any]:
    """What makes two runs' pixels the same (the grid, the model, the tissue rule), so that one's
    finished chunks serve the other. The box is not part of it: every run tiles on one grid."""
    return {
        "tile": plan.tile, "overlap": plan.overlap, "scale": plan.scale, "model": _model_identity(model_info),
        "skip_background": params.skip_background, "tissue_threshold": params.tissue_threshold,
        "postprocess": [params.kernel_size, params.iterations] if params.postprocess else None,
    }


def _open_maps(root: Path, slide, predictor: TilePredictor, plan: Plan,
               overwrite: bool) -> tuple[ClassMap, ConfidenceMap, bool]:
    """The class map and its confidence map, and whether the confidence map is new beside a class
    map that was there (its finished chunks then have no confidence)."""
    cm = _open_classmap(root, slide, predictor, plan, overwrite)
    try:
        return cm, ConfidenceMap.open_for(cm, mode="r+"), False
    except ClassMapError:  # none, an earlier class map's, or unreadable: made anew
        return cm, ConfidenceMap.create_for(cm), cm.status != "empty" or (root / "progress.log").is_file()


def _damaged(cm: ClassMap, confidence: ConfidenceMap, **which) -> tuple[list, str]:
    """Damaged or missing chunks of both maps (:meth:`ClassMap.damaged_chunks`), and a few words on them."""
    labels, scores = cm.damaged_chunks(**which), confidence.damaged_chunks(**which)
    words = "; ".join(d.damage_summary(found) for d, found in ((cm, labels), (confidence, scores)) if found)
    return labels + scores, words


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
    Setting ``cancel`` stops within one batch; a cancelled run resumes later. The results folder
    is locked for the run: a second writer (another run, an applied review) is refused.
    """
    params = params or SegmentationParams()
    root = Path(root)
    plan = plan_segmentation(slide, predictor, params, region)
    with writing(root, "a segmentation run"):
        return (yield from _run(slide, predictor, root, params, plan, overwrite, cancel))


def _run(slide, predictor: TilePredictor, root: Path, params: SegmentationParams, plan: Plan, overwrite: bool,
         cancel: threading.Event | None) -> Generator[Progress, None, SegmentationResult]:
    start = time.perf_counter()
    cm, confidence, unscored = _open_maps(root, slide, predictor, plan, overwrite)
    log_path = root / "progress.log"
    key = run_key(plan, predictor.info, params)
    previous = cm.meta.get("job")
    damaged: list = []
    words = ""
    if plan.whole_slide:
        if cm.status == "complete" and not overwrite and unscored:
            if previous != key:
                raise SegmentationError(
                    f"{root}: the complete class map has no confidence map (made by an earlier version); segment "
                    "it with the settings that made it to add one, or use {opt:overwrite}")
            plan.notes.append("the class map has no confidence map (made by an earlier version): the slide is "
                              "segmented again to make one; reviewed regions stay as they are")
        elif cm.status == "complete" and not overwrite:
            damaged, words = _damaged(cm, confidence)  # all levels: a rerun of a complete map is otherwise no work
            if not damaged:
                raise AlreadyComplete(f"{root}: already complete (use {{opt:overwrite}} to segment again)")
            if previous != key:
                raise SegmentationError(
                    f"{root}: {len(damaged)} chunk(s) of the complete class map are damaged or missing "
                    f"({words}); segment it with the settings that made it to repair them, "
                    "or use {opt:overwrite}")
            _log_all_but(log_path, cm, plan.box, _level0(damaged))  # the repair resumes from every intact chunk
        if cm.status == "incomplete" and previous not in (None, key) and not overwrite:
            raise SegmentationError(
                f"{root}: an unfinished run with other settings is there; rerun it with the same settings to "
                "resume, or use {opt:overwrite}")
        resuming = previous == key and not overwrite and not unscored
        if not resuming:
            remove_progress(log_path)
        log_finished = True
        cm.update_meta(status="incomplete", job=key)
    else:
        # a region run feeds the whole-slide run of its settings, unless a whole-slide run of other
        # settings owns the log (unfinished, or complete: a repair needs its settings); post-processing
        # needs context a region does not have
        log_finished = not params.postprocess and (previous == key or cm.status not in ("incomplete", "complete"))
        resuming = log_finished and previous == key and not unscored
        if log_finished and not resuming:
            remove_progress(log_path)
            cm.update_meta(job=key)
    done, rows = read_finished(log_path, "s") if resuming else (set(), 0)
    if resuming:  # what this run takes as finished must be whole: checked against the checksums
        mine = set(cm.chunks_in(plan.box))
        kept = (done | {k for k in mine if cm.chunk_box(*k)[0] < rows}) & mine
        if not damaged:
            damaged, words = _damaged(cm, confidence, levels=[0], keys=kept)
    if resuming and damaged:
        bad = _level0(damaged)
        done -= bad
        rows = min([rows] + [cm.chunk_box(*k)[0] for k in bad])
        plan.notes.append(f"{len(damaged)} damaged or missing chunk(s) found ({words}); "
                          "they are segmented again")

    def protect() -> list[Box]:
        cm.refresh()
        return cm.reviewed_boxes()

    grid = plan.grid()
    kinds = _classify(grid, cm, plan, done, rows, _tissue(slide, params), params.tissue_threshold)
    counts = _count(kinds)
    cancelled = False
    log = dict(progress_log=log_path if log_finished else None, log_prefix="s", log_rows=plan.whole_slide,
               settled=plan.box if plan.whole_slide else _settled(grid.box, plan))
    if params.postprocess:
        raw = cm.group["raw"] if "raw" in cm.group else cm.group.create_array(
            "raw", shape=plan.shape, chunks=cm.chunk, dtype="uint8", fill_value=0)
        writer = ChunkWriter(cm, plan.box, done=done, rows_done=rows, target=raw, confidence=confidence, **log)
    else:
        writer = ChunkWriter(cm, plan.box, done=done, rows_done=rows, protect=protect, confidence=confidence, **log)
    tiles_seen = [0]
    try:
        yield from _run_tiles(slide, predictor, grid, kinds, plan, params, writer, cancel, tiles_seen)
    except _Cancelled:
        cancelled = True
    finally:
        writer.close()
    counts["processed"] = tiles_seen[0]
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
        cm.update_meta(status="complete", job=key, segmented=[record])
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
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if progress is not None:
                progress(event)
    finally:
        gen.close()  # interrupted (Ctrl-C, SIGTERM) in the callback: the run still keeps what it finished


class _Cancelled(Exception):
    pass


def _classify(grid: TileGrid, cm: ClassMap | None, plan: Plan, done: set, rows: int, tissue,
              threshold: float) -> dict:
    """Kind of every tile, in row-major order. A tile is DONE when every pixel it gives to the
    run's box is final: in a finished chunk, or above the finished ``rows``."""
    kinds: dict[tuple[int, int], TileKind] = {}
    for r, c in grid.tiles():
        box = grid.tile_box(r, c)
        inside = intersect(box, plan.box)
        if inside is None or inside[0] + inside[2] <= rows or (
                done and all(k in done for k in cm.chunks_in(inside))):
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
               params: SegmentationParams, writer: ChunkWriter, cancel: threading.Event | None,
               seen: list[int]):
    """The main loop: batches of model tiles, with the tiles between them, into the stitcher.
    ``seen[0]`` counts the tiles stitched so far (what a cancelled run reports as done)."""
    stitcher = ConfidenceStitcher(grid, predictor.num_classes, predictor.device)
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
        seen[0] = pointer
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
