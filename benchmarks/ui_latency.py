"""How responsive napari stays with the SAM-Lung plugin. Prints figures; asserts nothing.

1. Opening: time to open a large generated slide (default 50,000 x 50,000 px) through the
   plugin's reader and draw it, against a small one (2,048 px); the ratio should be <= 1.5.
2. Stalls: while the widget segments a whole slide in its worker (tiny model, CPU by default), a
   QTimer ticks every 5 ms and the camera pans and zooms every 100 ms, as a person would;
   the longest gap between ticks is the longest the viewer froze (target < 100 ms). The same
   is measured with no run going, for comparison.

Run under a display (``xvfb-run -a python benchmarks/ui_latency.py``). Options: ``--size``,
``--segment-size``, ``--device``, ``--checkpoint`` (default: a fresh tiny model).
"""

from __future__ import annotations

import argparse
import os
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TICK_MS = 5
PAN_MS = 100


def write_large_slide(path: Path, size: int, mpp: float = 0.25, tile: int = 256) -> Path:
    """A pyramidal JPEG TIFF of ``size`` px a side in seconds: one encoded tile repeated."""
    import imagecodecs
    import tifffile
    from skimage import data

    jpeg = imagecodecs.jpeg8_encode(np.ascontiguousarray(data.immunohistochemistry()[:tile, :tile]), level=75)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        side, level = size, 0
        while True:
            count = (-(-side // tile)) ** 2
            tw.write(itertools.repeat(jpeg, count), shape=(side, side, 3), dtype="uint8", tile=(tile, tile),
                     compression="jpeg", photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                     resolutionunit="CENTIMETER", subfiletype=1 if level else 0)
            if side <= tile:
                return path
            side, level = -(-side // 2), level + 1


def time_open(viewer, app, path: Path, repeats: int) -> list[float]:
    """Seconds from ``viewer.open`` to the first drawn frame, ``repeats`` times."""
    times = []
    for _ in range(repeats):
        viewer.layers.clear()
        app.processEvents()
        start = time.perf_counter()
        viewer.open(str(path), plugin="napari-samlung")
        viewer.screenshot(canvas_only=True)  # forces the canvas to draw what the layer shows
        times.append(time.perf_counter() - start)
    return times


class StallMeter:
    """The gaps between ticks of a fast QTimer, while the camera wanders."""

    def __init__(self, viewer, move: bool = True):
        from qtpy.QtCore import QTimer

        self.viewer, self.move = viewer, move
        self.gaps: list[float] = []
        self._last = None
        self._tick = QTimer()
        self._tick.setInterval(TICK_MS)
        self._tick.timeout.connect(self._on_tick)
        self._pan = QTimer()
        self._pan.setInterval(PAN_MS)
        self._pan.timeout.connect(self._on_pan)
        self._step = 0

    def _on_tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append(now - self._last)
        self._last = now

    def _on_pan(self) -> None:
        camera = self.viewer.scene.camera
        self._step += 1
        y, x = camera.center[-2:]
        camera.center = (y + 40 * np.sin(self._step / 5), x + 40 * np.cos(self._step / 5))
        camera.zoom *= 1.15 if (self._step // 10) % 2 else 1 / 1.15

    def __enter__(self) -> StallMeter:
        self._tick.start()
        if self.move:
            self._pan.start()
        return self

    def __exit__(self, *exc) -> None:
        self._tick.stop()
        self._pan.stop()

    def summary(self) -> str:
        gaps = np.array(self.gaps) * 1000
        return (f"longest gap {gaps.max():.0f} ms, 99th percentile {np.percentile(gaps, 99):.0f} ms, "
                f"median {np.median(gaps):.1f} ms over {len(gaps)} ticks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=50_000, help="side of the large slide (px)")
    parser.add_argument("--small", type=int, default=2048, help="side of the small slide (px)")
    parser.add_argument("--segment-size", type=int, default=2048, help="side of the slide segmented (px)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", type=Path, help="SAM-Lung checkpoint (default: a fresh tiny model)")
    parser.add_argument("--sam-weights", type=Path)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_samlung.model import SamLung, SamLungConfig
    from napari_samlung.model.checkpoint import save_checkpoint
    from napari_samlung.synthetic import write_demo_slide

    work = args.dir or Path(tempfile.mkdtemp(prefix="samlung-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SAMLUNG_CONFIG_DIR"] = str(work / "config")  # leave the real settings alone
    print(f"torch {torch.__version__}, napari {napari.__version__}, device {args.device}, folder {work}")

    viewer = napari.Viewer(title="ui latency")
    viewer.window.resize(1400, 900)
    app = QApplication.instance()
    app.processEvents()

    # 1. opening a large slide against a small one
    start = time.perf_counter()
    large = write_large_slide(work / f"large-{args.size}.tif", args.size)
    small = write_large_slide(work / f"small-{args.small}.tif", args.small)
    print(f"generated {args.size} px slide ({large.stat().st_size / 2**20:.0f} MiB) and "
          f"{args.small} px slide in {time.perf_counter() - start:.1f} s")
    time_open(viewer, app, small, 1)  # warm-up: plugin import, GL context
    open_small = statistics.median(time_open(viewer, app, small, args.repeats))
    open_large = statistics.median(time_open(viewer, app, large, args.repeats))
    print(f"open + first draw: {args.small} px {open_small * 1000:.0f} ms, "
          f"{args.size} px {open_large * 1000:.0f} ms, ratio {open_large / open_small:.2f} (target <= 1.5), "
          f"median of {args.repeats}")
    viewer.layers.clear()

    # 2. event-loop stalls with and without a whole-slide segmentation running
    checkpoint = args.checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = work / "tiny.pt"
        save_checkpoint(SamLung(SamLungConfig.tiny(num_classes=1)), checkpoint, include_encoder=True)
    slide = work / "segment-me.svs"
    write_demo_slide(slide, (args.segment_size, args.segment_size), mpp=0.5)
    viewer.open(str(slide), plugin="napari-samlung")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-samlung", "SAM-Lung segmentation")
    segment = widget.segment
    segment.checkpoint.set_text(str(checkpoint))
    if args.sam_weights:
        segment.sam_weights.set_text(str(args.sam_weights))
    segment.device.setCurrentText(args.device)
    segment.batch_size.setValue(args.batch_size)
    segment.overwrite.setChecked(True)

    def pump(seconds: float | None = None, until=None) -> None:
        end = time.perf_counter() + (seconds or 1e9)
        while time.perf_counter() < end and not (until and until()):
            app.processEvents()
            time.sleep(0.001)

    idle = StallMeter(viewer)
    with idle:
        pump(3.0)
    print(f"idle, panning and zooming: {idle.summary()}")

    segment.full_button.click()  # the first run loads the model; measure the steady ones
    pump(until=lambda: widget.job is None)
    for move, doing in ((False, "camera still"), (True, "panning and zooming")):
        busy = StallMeter(viewer, move)
        with busy:
            start = time.perf_counter()
            segment.full_button.click()
            pump(until=lambda: widget.job is None)
            seconds = time.perf_counter() - start
        print(f"segmenting {args.segment_size} px in {seconds:.1f} s, {doing}: {busy.summary()} "
              "(target: longest gap < 100 ms)")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
