"""Regenerate ``docs/screenshot.png``: napari with the SAM-Lung widget docked and a segmentation.

Run under a display (Xvfb on a server)::

    xvfb-run -a python docs/make_screenshot.py                 # trains a tiny model first (a few minutes)
    xvfb-run -a python docs/make_screenshot.py --checkpoint best.pt [--sam-weights sam_vit_b_01ec64.pth]

Without ``--checkpoint`` the script fine-tunes a tiny model for a few epochs on tiles of a
synthetic slide (through the widget's own launcher, ``napari_samlung.training_runs.launcher``), so the picture
shows a real, if modest, segmentation of the synthetic demo slide, plus one reviewed region.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SLIDE_SIDE = 2048


def train_tiny(workdir: Path, epochs: int) -> Path:
    """A tiny SAM-Lung fine-tuned on the synthetic slide's known tumor masks; returns best.pt."""
    import torch

    from napari_samlung.data import write_png
    from napari_samlung.training_runs.launcher import FinetuneConfig, run_finetune
    from napari_samlung.model import SamLung, SamLungConfig
    from napari_samlung.model.checkpoint import save_checkpoint
    from napari_samlung.synthetic import SyntheticSlide

    data = workdir / "data"
    source = SyntheticSlide((SLIDE_SIDE, SLIDE_SIDE), seed=1)  # another slide than the one shown
    rng = np.random.default_rng(0)
    for split, count in (("train", 32), ("val", 4)):
        for sub in ("mask", "label"):
            (data / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            y, x = (int(v) for v in rng.integers(0, SLIDE_SIDE - 256, 2))
            write_png(data / split / "mask" / f"{i}.png", source[y:y + 256, x:x + 256])
            write_png(data / split / "label" / f"{i}.png", source.truth(y, x, 256, 256) * 255)
    torch.manual_seed(0)
    init = workdir / "init.pt"
    save_checkpoint(SamLung(SamLungConfig.tiny(num_classes=1)), init, include_encoder=True)
    config = FinetuneConfig([data], init, workdir / "run", epochs=epochs, batch_size=4, lr=0.05, device="cpu")
    run = run_finetune(config)
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            return stop.value.checkpoint
        print(event.summary(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="SAM-Lung checkpoint (default: train a tiny one)")
    parser.add_argument("--sam-weights", type=Path)
    parser.add_argument("--epochs", type=int, default=8,
                        help="epochs of the tiny model trained without --checkpoint")
    parser.add_argument("--output", type=Path, default=HERE / "screenshot.png")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_samlung.synthetic import write_demo_slide

    workdir = Path(tempfile.mkdtemp(prefix="samlung-screenshot-"))
    os.environ["SAMLUNG_CONFIG_DIR"] = str(workdir / "config")  # leave the real settings alone
    checkpoint = args.checkpoint or train_tiny(workdir, args.epochs)
    slide_path = workdir / "demo-slide.svs"
    write_demo_slide(slide_path, (SLIDE_SIDE, SLIDE_SIDE), mpp=0.5)

    viewer = napari.Viewer(title="napari-samlung")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()

    def wait(condition, timeout=600.0) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise TimeoutError("the widget did not finish in time")
            app.processEvents()
            time.sleep(0.02)

    viewer.open(str(slide_path), plugin="napari-samlung")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-samlung", "SAM-Lung segmentation")
    widget.segment.checkpoint.set_text(str(checkpoint))
    if args.sam_weights:
        widget.segment.sam_weights.set_text(str(args.sam_weights))
    widget.segment.full_button.click()
    wait(lambda: widget.job is None)

    # one reviewed region, as a pathologist would leave it
    slide_layer = viewer.layers[0]
    corners = [[300, 250], [300, 500], [500, 500], [500, 250]]  # µm
    roi = viewer.add_shapes([corners], shape_type="rectangle", name="roi", units=("um", "um"))
    viewer.layers.selection.active = roi
    widget.review.review_button.click()
    wait(lambda: widget.job is None)
    widget.review.apply_button.click()
    wait(lambda: widget.job is None)
    viewer.layers.remove(roi)
    viewer.layers.selection.active = slide_layer
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(args.output), canvas_only=False)
    print(f"wrote {args.output}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
