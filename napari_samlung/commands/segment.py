"""``samlung segment``: whole slides (or a region) into class maps, label TIFFs and GeoJSON.

Two phases. First every slide of this rank is planned and its results folder chosen, with the
model's geometry read from its configuration only: a refused plan (say, upsampling more than 2x),
an unreadable slide or a bad results folder costs no model load, and ``--dry-run`` stops there,
printing each plan. Then the model loads and the planned slides are segmented and exported.

A slide the user got wrong prints one line and the others still run; the exit status is then 2.
Under torchrun each rank takes its share of the slides (``slides[rank::world]``). Ctrl-C or
SIGTERM keeps the finished tiles; the line printed says how many and that rerunning resumes.
A complete class map is skipped, but its label TIFF and GeoJSON are written again when they are
missing or older than the class map (an interrupted export, a review applied since).

Each segmented slide's tumour burden (:mod:`~napari_samlung.results.burden`) is measured into its
metadata before the exports (so the GeoJSON carries it), printed under its summary line, and
merged into the summary table (``OUT_DIR/summary.csv`` with ``-o``, or ``--summary FILE``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from typing import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.commands.summary import add_min_region_area, check_table_path, merge_table, table_row
from napari_samlung.commands.options import (
    add_model_arguments,
    non_negative_int,
    positive_float,
    positive_int,
)
from napari_samlung.commands.wording import note, option_name, report_user_error
from napari_samlung.errors import word
from napari_samlung.geometry import Box
from napari_samlung.inference.engine import (
    AlreadyComplete,
    ModelSpec,
    Plan,
    PlanSummary,
    SegmentationParams,
    count_tiles,
    plan_segmentation,
    run_key,
    segment,
)
from napari_samlung.inference.models import load_predictor, model_spec
from napari_samlung.inference.predictor import TilePredictor, resolve_device
from napari_samlung.results import burden
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import has_confidence
from napari_samlung.results.folders import check_results_folder, choose_results, slide_stem
from napari_samlung.results.lock import writing
from napari_samlung.slide import SlideError, open_slide

DESCRIPTION = ("Segment slides at the model's resolution into a class map on disk (resumable), then export it "
               "as a pyramidal label TIFF and QuPath GeoJSON. Every slide is planned before the model loads; "
               "--dry-run prints the plans only. Under torchrun each rank takes its share of the slides.")

EXIT_FAILURES = 2


@dataclass(frozen=True)
class MeasuredRate:
    """A whole-slide rate measured with this engine (README, Performance), for time estimates."""

    preset: str
    tile: int
    compiled: bool
    gpu: str  # a part of torch.cuda.get_device_name()
    tiles_per_s: float
    source: str


MEASURED_RATES = (
    MeasuredRate("vit_b", 1024, True, "H100", 137.9, "a 20,000 px slide on an H100 80GB, --compile"),
)


@dataclass(frozen=True)
class Job:
    """A planned slide: where its results go, and the notes already printed about it."""

    path: Path
    root: Path
    notes: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samlung segment``."""
    parser.add_argument("slides", nargs="+", metavar="SLIDE",
                        help="slide files or folders (svs, ndpi, tif/tiff, ome.tif, DICOM file or folder, "
                             "mrxs, scn, bif, vms, OME-Zarr folder, png, jpg)")
    parser.add_argument("-o", "--output", metavar="OUT_DIR",
                        help="an existing folder for the results (default: next to each slide, or a per-user "
                             "folder when that is read-only); one <name>.samlung folder per slide")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, help="tiles per batch (default 8)")
    parser.add_argument("--tile-size", type=positive_int, help="tile side in model pixels (default: the model's)")
    parser.add_argument("--overlap", type=non_negative_int,
                        help="tile overlap in model pixels (default: tile size / 8)")
    parser.add_argument("--mpp", type=positive_float, help="the slides' microns per pixel, for files that do not say")
    parser.add_argument("--target-mpp", type=positive_float,
                        help="segment at this resolution instead of the model's (microns per pixel)")
    parser.add_argument("--allow-upsampling", action="store_true",
                        help="segment even at more than twice the resolution of the slide's finest level")
    parser.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                        help="segment only this level-0 rectangle")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each slide's plan (tiles, sizes, resampling, time where measured) and stop; "
                             "no model is loaded")
    parser.add_argument("--overwrite", action="store_true", help="segment again even where a result is complete")
    parser.add_argument("--postprocess", action="store_true", help="morphological open + close of the result")
    parser.add_argument("--kernel-size", type=positive_int, default=15, help="post-processing kernel (default 15)")
    parser.add_argument("--iterations", type=non_negative_int, default=5,
                        help="post-processing repetitions (default 5)")
    parser.add_argument("--no-tissue-detection", action="store_true", help="segment every tile, tissue or not")
    parser.add_argument("--workers", type=positive_int, help="tile-reading threads (default: CPU count, at most 8)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder blocks (faster on GPUs)")
    parser.add_argument("--no-export", action="store_true", help="write the class map only (no label TIFF / GeoJSON)")
    add_min_region_area(parser)
    parser.add_argument("--summary", type=Path, metavar="FILE.csv",
                        help="merge each slide's tumour burden into this table (default: OUT_DIR/summary.csv "
                             "with -o; none without)")


def run(args: argparse.Namespace) -> int:
    """Plan this rank's share of ``args.slides``, then (unless ``--dry-run``) segment the planned
    ones; 0, or 2 when some slide failed (each said so in one line)."""
    params = _params(args)
    slides = _my_slides(args.slides)
    device = _device(args.device)
    spec = model_spec(args.checkpoint, args.preset, args.num_classes)
    if args.output is not None:
        check_results_folder(args.output)
    table = _table(args)
    region = _region(args.region)
    failures = _Failures()
    jobs: list[Job] = []
    for path in slides:
        with failures.guard():
            jobs.append(_plan_slide(path, spec, params, args, region, device))
    if jobs and not args.dry_run:
        predictor = load_predictor(args.checkpoint, args.sam_weights, args.preset, args.num_classes,
                                   device=device, compile=args.compile)
        merged = 0
        for job in jobs:
            with failures.guard():
                row = _segment_slide(job, predictor, params, args, region)
                if table is not None and row is not None:
                    merge_table(table, [row])  # slide by slide: the table is current however far a batch gets
                    merged += 1
        if merged:
            print(f"tumour burden of {merged} slide{'s' if merged != 1 else ''} in {table}")
    return EXIT_FAILURES if failures.count else 0


def _table(args: argparse.Namespace) -> Path | None:
    """The summary table the slides' rows go into, checked before any work."""
    table = args.summary or (Path(args.output) / "summary.csv" if args.output is not None else None)
    if table is not None:
        check_table_path(table)
    return table


def _params(args: argparse.Namespace) -> SegmentationParams:
    params = SegmentationParams(
        tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, target_mpp=args.target_mpp,
        skip_background=not args.no_tissue_detection, postprocess=args.postprocess,
        kernel_size=args.kernel_size, iterations=args.iterations, workers=args.workers,
        allow_upsampling=args.allow_upsampling)
    params.validate()
    return params


def _my_slides(names: list[str]) -> list[Path]:
    """This rank's share of the slides, once all of them are known to exist."""
    slides = [Path(s) for s in names]
    for path in slides:
        if not path.exists():  # DICOM series and OME-Zarr images are folders
            raise SlideError(path, "no such file or folder")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return slides[rank::world]


def _device(name: str) -> torch.device:
    """The device, checked before any work; under torchrun ``auto`` is this rank's GPU."""
    if name == "auto" and int(os.environ.get("WORLD_SIZE", 1)) > 1 and torch.cuda.is_available():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return resolve_device(name)


def _region(xywh: list[int] | None) -> Box | None:
    """``--region X Y W H`` as the engine's (y, x, h, w)."""
    if xywh is None:
        return None
    x, y, w, h = xywh
    return y, x, h, w


class _Failures:
    """Counts the slides that failed with a user error, each reported in one line."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if not report_user_error("segment", exc):
                raise
            self.count += 1


def _plan_slide(path: Path, spec: ModelSpec, params: SegmentationParams, args: argparse.Namespace,
                region: Box | None, device: torch.device) -> Job:
    """Plan one slide and choose its results folder, without the model; print the notes (and with
    ``--dry-run`` the plan)."""
    with open_slide(path, mpp=args.mpp) as slide:
        plan = plan_segmentation(slide, spec, params, region)
        root, notice = choose_results(path, args.output)
        if notice:
            note("segment", notice)
        if args.dry_run:
            _print_plan(path, slide, plan, params, root, args, device, spec.preset)
        else:
            for text in plan.notes:
                note("segment", text)
    return Job(path, root, tuple(plan.notes))


def _print_plan(path: Path, slide, plan: Plan, params: SegmentationParams, root: Path, args: argparse.Namespace,
                device: torch.device, preset: str | None) -> None:
    summary, state = _summary(slide, plan, params, root, args.overwrite)
    print(f"{path.name} -> {root} ({state})")
    for line in summary.lines() + [_estimate(summary, args, device, preset)]:
        print(f"  {word(line, option_name)}")


def _summary(slide, plan: Plan, params: SegmentationParams, root: Path, overwrite: bool) -> tuple[PlanSummary, str]:
    """The plan's tile counts and what a run would make of the results folder. Without the model,
    tiles that a run of these settings finished count as done, assuming the model it recorded."""
    if not ClassMap.exists(root):
        return count_tiles(slide, plan, params), "new"
    cm = ClassMap.open(root)
    job = cm.meta.get("job")
    same = bool(job) and run_key(plan, job.get("model") or {}, params) == job
    summary = count_tiles(slide, plan, params, root, job) if same and not overwrite else count_tiles(slide, plan, params)
    return summary, word(_state(cm, plan, root, overwrite, same, summary.tiles.get("done", 0)), option_name)


def _state(cm: ClassMap, plan: Plan, root: Path, overwrite: bool, same: bool, done: int) -> str:
    """What a run would do with an existing class map, in a few words."""
    if overwrite:
        return "exists: segmented again, reviewed regions kept"
    if cm.status == "complete" and plan.whole_slide and not has_confidence(cm):
        return ("complete without a confidence map (made by an earlier version): segmented again to make one, "
                "reviewed regions kept" if same else
                "complete without a confidence map, made with other settings: refused unless {opt:overwrite}")
    if cm.status == "complete" and plan.whole_slide:
        exports = "its label TIFF and GeoJSON written again" if _exports_stale(root) else "skipped"
        return f"complete: {exports}; {{opt:overwrite}} segments it again"
    if cm.status == "incomplete" and plan.whole_slide and cm.meta.get("job") and not same:
        return "an unfinished run with other settings: refused unless {opt:overwrite}"
    resumed = f"; {done} finished tiles are resumed if the model is the one that made them" if done else ""
    return cm.status + resumed


def _estimate(summary: PlanSummary, args: argparse.Namespace, device: torch.device,
              preset: str | None = None) -> str:
    """The run's time from a rate measured for this model (``preset``, else ``--preset``), tile size
    and device; none without one."""
    tiles = summary.tiles.get("model", 0)
    preset, hardware = preset or args.preset or "unknown", _hardware(device)
    rate = next((r for r in MEASURED_RATES if (r.preset, r.tile, r.compiled) == (preset, summary.plan.tile, args.compile)
                 and r.gpu in hardware), None)
    if rate is None:
        compiled = ", compiled" if args.compile else ""
        return f"time: not estimated (no rate measured for {preset}, {summary.plan.tile} px tiles{compiled} on {hardware})"
    return (f"time: about {_duration(tiles / rate.tiles_per_s)} for {tiles} tiles at {rate.tiles_per_s:g} tiles/s "
            f"(measured on {rate.source})")


def _hardware(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _segment_slide(job: Job, predictor: TilePredictor, params: SegmentationParams, args: argparse.Namespace,
                   region: Box | None) -> dict | None:
    """Segment one planned slide, measure its tumour burden, export it unless asked not to, and say
    what was done; its row of the summary table (None when it was not measured)."""
    with open_slide(job.path, mpp=args.mpp) as slide:
        try:
            with tqdm(desc=job.path.name, unit="tile", dynamic_ncols=True, disable=None) as bar:
                result = segment(slide, predictor, job.root, params, region=region, overwrite=args.overwrite,
                                 progress=_bar_update(bar))
        except AlreadyComplete as exc:
            figures = _measure(job, slide, args, fresh=False)
            _complete(job, exc, args.no_export, figures)
            return table_row(job.root, figures)
        except KeyboardInterrupt as stop:
            stop.add_note(_kept(slide, job, predictor, params, region))
            raise
        if result.status != "complete":
            return None
        figures = _measure(job, slide, args, fresh=True)
    for text in result.plan.notes:
        if text not in job.notes:
            note("segment", text)
    exported = [] if args.no_export else _export(job)
    tiles = result.tiles
    print(f"{job.path.name}: {tiles.get('model', 0)} tiles segmented, {tiles.get('background', 0)} without tissue "
          f"skipped, {tiles.get('done', 0)} resumed, {result.seconds:.1f} s -> {job.root}\n  {figures.line()}"
          + "".join(f"\n  {p}" for p in exported))
    return table_row(job.root, figures)


def _measure(job: Job, slide, args: argparse.Namespace, fresh: bool) -> burden.Burden:
    """The slide's tumour burden, stored in its metadata: measured now after a run (``fresh``), else
    the stored figures while they are current."""
    with tqdm(desc=f"{job.path.name}: tumour burden", unit="chunk", leave=False, disable=None) as bar:
        progress = _bar_callback(bar)
        if fresh:
            return burden.update_metadata(job.root, slide, args.min_region_area, progress)
        return burden.current(job.root, slide, args.min_region_area, progress)


def _bar_callback(bar: tqdm):
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update


def _bar_update(bar: tqdm):
    def show(event) -> None:
        bar.total = event.total
        bar.set_postfix_str(event.phase)
        bar.update(event.done - bar.n)

    return show


def _kept(slide, job: Job, predictor: TilePredictor, params: SegmentationParams, region: Box | None) -> str:
    """What an interrupted run left for the next one (its finished tiles), in a few words."""
    plan = plan_segmentation(slide, predictor, params, region)
    summary = count_tiles(slide, plan, params, job.root, run_key(plan, predictor.info, params))
    return (f"{job.path.name}: {summary.tiles.get('done', 0)} of {summary.total} tiles are done and kept in "
            f"{job.root}; rerun the same command to resume")


def _complete(job: Job, exc: AlreadyComplete, no_export: bool, figures: burden.Burden) -> None:
    """A complete class map: skipped, but its exports are written when missing or out of date."""
    if no_export or not _exports_stale(job.root):
        print(f"samlung segment: {exc.worded(option_name)}; skipped\n  {figures.line()}")
        return
    exported = _export(job)
    print(f"{job.path.name}: already complete; its label TIFF and GeoJSON were missing or older than the class "
          f"map and are written again\n  {figures.line()}" + "".join(f"\n  {p}" for p in exported))


def _export_paths(root: Path) -> list[Path]:
    """The label TIFF and GeoJSON a run writes beside the class map."""
    name = slide_stem(root)
    return [root / f"{name}-labels.tif", root / f"{name}.geojson"]


def _exports_stale(root: Path) -> bool:
    """Whether an export is missing or older than the class map's last change."""
    changed = ClassMap.changed_ns(root)
    return any(not p.is_file() or p.stat().st_mtime_ns < changed for p in _export_paths(root))


def _export(job: Job) -> list[Path]:
    """Write the label TIFF and GeoJSON under the folder's lock, so that they show one state of
    the class map; a Ctrl-C or SIGTERM here says that only they are missing."""
    tiff, geojson = paths = _export_paths(job.root)
    try:
        with writing(job.root, "samlung segment (writing the label TIFF and GeoJSON)"):
            classmap = ClassMap.open(job.root)
            classmap_to_label_tiff(classmap, tiff)
            classmap_to_geojson(classmap, geojson)
    except KeyboardInterrupt as stop:
        stop.add_note(f"{job.path.name}: the class map is saved in {job.root}; rerun the same command to write "
                      "its label TIFF and GeoJSON")
        raise
    return paths
