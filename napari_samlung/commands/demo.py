"""`samlung demo`: the whole loop on a synthetic slide, headless, on the CPU, in a few minutes.

1. build a pyramidal synthetic H&E slide whose tumor region is known (``sample_data.py``);
2. segment it with an untrained ``tiny`` SAM-Lung model;
3. play the pathologist: correct one region from the known truth, through a review draft;
4. export the reviewed region as a training set;
5. fine-tune on it with two DDP processes (torchrun, gloo), starting from the first checkpoint, with
   the program's default ``--tune``: the whole network, since the tiny model's encoder is random;
6. segment again with the fine-tuned checkpoint and report Dice against the truth before and after,
   on the whole slide and on the part nobody corrected.

``samlung demo --gui`` opens napari on the same folder with the SAM-Lung widget docked.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_samlung.commands.options import positive_int
from napari_samlung.geometry import Box
from napari_samlung.results.classmap import ClassMap
from napari_samlung.metrics import dice_score as dice

DESCRIPTION = ("Segment a synthetic slide with a tiny model, correct one region from the known truth, export it, "
               "fine-tune on it with two DDP processes, segment again, and print Dice before and after. --gui opens "
               "napari on the same data.")

SLIDE_SIDE = 2048
REGION_SIDE = 768  # the corrected region: 3 x 3 tiles of the tiny model
MPP = 0.5


@dataclass
class DemoPaths:
    """Where every artifact of a demo run lives."""

    root: Path

    @property
    def slide(self) -> Path:
        return self.root / "demo-slide.svs"

    @property
    def truth(self) -> Path:
        return self.root / "demo-slide-truth.png"

    @property
    def results(self) -> Path:
        return self.root / "demo-slide.samlung"

    @property
    def initial(self) -> Path:
        return self.root / "models" / "initial.pt"

    @property
    def training_set(self) -> Path:
        return self.root / "training-set"

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"


def pick_region(truth: np.ndarray, side: int) -> Box:
    """The box of ``side`` with the most even tumor / non-tumor mix (the most instructive one)."""
    best, best_box = 2.0, (0, 0, side, side)
    step = side // 4
    for y in range(0, truth.shape[0] - side + 1, step):
        for x in range(0, truth.shape[1] - side + 1, step):
            score = abs(truth[y:y + side, x:x + side].mean() - 0.5)
            if score < best:
                best, best_box = score, (y, x, side, side)
    return best_box


def _say(message: str) -> None:
    print(f"[samlung demo] {message}", flush=True)


def _segment(paths: DemoPaths, checkpoint: Path, overwrite: bool) -> ClassMap:
    from tqdm import tqdm

    from napari_samlung.inference.engine import SegmentationParams, segment
    from napari_samlung.inference.models import load_predictor
    from napari_samlung.slide import open_slide

    predictor = load_predictor(checkpoint, device="cpu")
    with open_slide(paths.slide) as slide, tqdm(desc="  segment", unit="tile", leave=False, disable=None) as bar:
        def show(event):
            bar.total = event.total
            bar.update(event.done - bar.n)

        result = segment(slide, predictor, paths.results, SegmentationParams(batch_size=8), overwrite=overwrite,
                         progress=show)
    return result.classmap


def prepare(paths: DemoPaths):
    """The synthetic slide, its truth and the untrained self-contained tiny checkpoint (made once)."""
    import torch

    from napari_samlung.data import write_png
    from napari_samlung.model import SamLung, SamLungConfig, save_checkpoint
    from napari_samlung.synthetic import SyntheticSlide, write_demo_slide

    paths.root.mkdir(parents=True, exist_ok=True)
    synthetic = SyntheticSlide((SLIDE_SIDE, SLIDE_SIDE))
    if not paths.slide.exists():
        write_demo_slide(paths.slide, (SLIDE_SIDE, SLIDE_SIDE), mpp=MPP)
    if not paths.truth.exists():
        write_png(paths.truth, synthetic.truth(0, 0, SLIDE_SIDE, SLIDE_SIDE) * 255)
    if not paths.initial.exists():
        paths.initial.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            save_checkpoint(SamLung(SamLungConfig.tiny(num_classes=1, mpp=MPP)), paths.initial, include_encoder=True)
    return synthetic


def run_demo(root: Path, *, epochs: int = 60, nproc: int = 2) -> dict:
    """Run the loop in ``root``; returns the figures printed at the end."""
    from napari_samlung.results.drafts import start_review
    from napari_samlung.annotations.training_set import export_training_set
    from napari_samlung.training_runs.launcher import FinetuneConfig, run_finetune
    from napari_samlung.slide import open_slide

    start = time.monotonic()
    paths = DemoPaths(root)
    _say(f"working in {root}")
    synthetic = prepare(paths)
    truth = synthetic.truth(0, 0, SLIDE_SIDE, SLIDE_SIDE)
    _say(f"1/6 synthetic slide {SLIDE_SIDE} x {SLIDE_SIDE} px at {MPP} um/px, tumor {truth.mean():.0%} of it")

    cm = _segment(paths, paths.initial, overwrite=True)
    before = cm.read((0, 0, *cm.shape))
    _say(f"2/6 segmented with the untrained tiny model: Dice {dice(before, truth):.3f}")

    box = pick_region(truth, REGION_SIDE)
    cm = ClassMap.open(paths.results, mode="r+")
    for record in cm.reviewed:  # a rerun in the same folder corrects afresh
        cm.remove_reviewed(record["id"])
    draft = start_review(cm, box)
    y, x, h, w = box
    draft.data[...] = truth[y:y + h, x:x + w]  # the pathologist's brush, from the known truth
    draft.apply()
    _say(f"3/6 corrected region x={x} y={y} {w} x {h} px (tumor {truth[y:y + h, x:x + w].mean():.0%}) and applied it")

    with open_slide(paths.slide) as slide:
        export_training_set(ClassMap.open(paths.results), slide, paths.training_set, overwrite=True)
    _say(f"4/6 exported the reviewed region to {paths.training_set}")

    config = FinetuneConfig([paths.training_set], paths.initial, paths.finetune / "run", epochs=epochs,
                            batch_size=2, lr=0.05, device="cpu", nproc=nproc)
    _say(f"5/6 fine-tuning on it: {nproc} DDP processes (torchrun, gloo), {epochs} epochs")
    run = run_finetune(config)
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            outcome = stop.value
            break
        if any(r.get("event") == "epoch" and r["epoch"] % 10 == 0 for r in event.events):
            print(f"  {event.summary()}", flush=True)

    after = _segment(paths, outcome.checkpoint, overwrite=True).read((0, 0, SLIDE_SIDE, SLIDE_SIDE))
    outside = np.ones_like(truth, bool)
    outside[y:y + h, x:x + w] = False
    figures = {
        "dice_before": dice(before, truth), "dice_after": dice(after, truth),
        "dice_before_uncorrected_part": dice(before[outside], truth[outside]),
        "dice_after_uncorrected_part": dice(after[outside], truth[outside]),
        "seconds": time.monotonic() - start,
    }
    _say("6/6 segmented again with the fine-tuned checkpoint")
    print(f"""
Dice against the known tumor region (whole slide):          before {figures['dice_before']:.3f}   after {figures['dice_after']:.3f}
Dice on the part nobody corrected (the model's own work):   before {figures['dice_before_uncorrected_part']:.3f}   after {figures['dice_after_uncorrected_part']:.3f}
Took {figures['seconds']:.0f} s. Artifacts:
  slide               {paths.slide}
  known tumor mask    {paths.truth}
  class map           {paths.results / 'classmap.zarr'}   (reviewed region recorded in its metadata)
  training set        {paths.training_set}
  checkpoints         {paths.initial} -> {outcome.checkpoint}
  fine-tuning log     {paths.finetune / 'run' / 'train.log'}
See it in napari:     samlung demo --gui --out {root}
""", flush=True)
    return figures


def open_gui(root: Path) -> None:
    """napari on the demo slide (and any results next to it) with the SAM-Lung widget docked."""
    import napari

    paths = DemoPaths(root)
    prepare(paths)
    finetuned = sorted(paths.finetune.glob("*/best.pt"))
    viewer = napari.Viewer(title="SAM-Lung demo")
    viewer.open(paths.slide, plugin="napari-samlung")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samlung", "SAM-Lung segmentation")
    widget.segment.checkpoint.edit.setText(str(finetuned[-1] if finetuned else paths.initial))
    napari.run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samlung demo``."""
    parser.add_argument("--out", type=Path, help="folder for everything the demo makes (default: a new "
                                                 "samlung-demo-<time> folder here)")
    parser.add_argument("--epochs", type=positive_int, default=60, help="fine-tuning epochs (default 60)")
    parser.add_argument("--nproc", type=positive_int, default=2, help="fine-tuning processes (default 2)")
    parser.add_argument("--gui", action="store_true", help="open napari on the demo data instead")


def run(args: argparse.Namespace) -> int:
    """The demo in ``args.out`` (or a new folder here), or napari on it with ``--gui``; returns 0."""
    root = args.out or Path.cwd() / f"samlung-demo-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if args.gui:
        open_gui(root)
    else:
        run_demo(root, epochs=args.epochs, nproc=args.nproc)
    return 0
