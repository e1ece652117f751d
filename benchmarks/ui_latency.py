"""How responsive napari stays with the SAM-Lung plugin. Prints figures; asserts nothing.

1. Opening: time to open a large generated slide (default 50,000 x 50,000 px) through the
   plugin's reader and draw it, against a small one (2,048 px); the ratio should be <= 1.5.
2. Stalls: a QTimer ticks every 5 ms on napari's (main) thread; the longest gap between ticks is
   the longest the viewer froze (target < 100 ms). Measured with no work going (camera panning and
   zooming every 100 ms, as a person would), then for each action of the widget from its button
   press until its job has ended and one more second has passed (its layers added and drawn):
   segment the whole slide (the first run, which loads the model and adds the result layers, apart
   from the steady runs, camera still, then panning), review the slide at whole-slide zoom
   (the draft of the whole slide) and apply that review, ``--rounds`` times, and the three
   exports. Python's full garbage collections (which stop every thread) are named where they fell.
   A summary prints the longest stall per action (first segment, segment, review, apply, export)
   and, since single stalls vary a lot on a shared machine, the median over the presses.
3. The floor: napari alone (no plugin code) in the same viewer, with the same layers: redrawing the
   same view, a review's display change in plain napari calls (an array of the draft's size swapped
   into a hidden labels layer, shown, selected, put in paint mode), and adding a labels layer and a
   shapes layer. An action that changes what is shown cannot stall less than these on this display.

Run under a display (``xvfb-run -a python benchmarks/ui_latency.py``). Options: ``--size``,
``--segment-size``, ``--device``, ``--checkpoint`` (default: a fresh tiny model), ``--rounds``,
``--skip-open``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

TICK_MS = 5
PAN_MS = 100
SETTLE_S = 1.0  # measured on after a job ends: what its results do to the viewer counts too
LEAD_S = 0.1  # measured before an action starts, so that a stall in the button press counts


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
    """The gaps between ticks of a fast QTimer, while the camera wanders (``move``) or stays; and
    Python's full garbage collections meanwhile (they stop every thread, whoever's code runs)."""

    def __init__(self, viewer, move: bool = True):
        from qtpy.QtCore import QTimer

        self.viewer, self.move = viewer, move
        self.gaps: list[float] = []
        self.collections: list[float] = []  # seconds of each full (generation 2) collection
        self._collecting = 0.0
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

    def _on_gc(self, phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._collecting = time.perf_counter()
            else:
                self.collections.append(time.perf_counter() - self._collecting)

    def __enter__(self) -> StallMeter:
        gc.callbacks.append(self._on_gc)
        self._tick.start()
        if self.move:
            self._pan.start()
        return self

    def __exit__(self, *exc) -> None:
        self._tick.stop()
        self._pan.stop()
        gc.callbacks.remove(self._on_gc)

    @property
    def longest_ms(self) -> float:
        return max(self.gaps, default=0.0) * 1000

    def summary(self) -> str:
        gaps = np.array(self.gaps or [0.0]) * 1000
        collections = "".join(f", a full garbage collection of {1000 * seconds:.0f} ms"
                              for seconds in self.collections)
        return (f"longest gap {gaps.max():.0f} ms, 99th percentile {np.percentile(gaps, 99):.0f} ms, "
                f"median {np.median(gaps):.1f} ms over {len(gaps)} ticks{collections}")


def pump(app, seconds: float | None = None, until: Callable[[], bool] | None = None) -> None:
    """Run napari's event loop for ``seconds`` or until ``until()`` holds."""
    end = time.perf_counter() + (seconds or 1e9)
    while time.perf_counter() < end and not (until and until()):
        app.processEvents()
        time.sleep(0.001)


def measure(app, viewer, widget, press: Callable[[], None], move: bool = False) -> tuple[StallMeter, float]:
    """Stalls from ``press()`` (a button of the widget) until its job has ended and settled; the
    action's seconds. The timer ticks before the press, so the press itself counts too."""
    meter = StallMeter(viewer, move)
    with meter:
        pump(app, LEAD_S)
        start = time.perf_counter()
        press()
        pump(app, until=lambda: widget.job is None)
        seconds = time.perf_counter() - start
        pump(app, SETTLE_S)
    return meter, seconds


def measure_open(viewer, app, work: Path, args) -> None:
    """Part 1: opening a large slide against a small one."""
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


def docked_widget(viewer, work: Path, args):
    """The widget over a freshly generated slide, with a checkpoint (a fresh tiny model by default)."""
    import torch

    from napari_samlung.model import SamLung, SamLungConfig
    from napari_samlung.model.checkpoint import save_checkpoint
    from napari_samlung.synthetic import write_demo_slide

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
    return widget, work / "exports"


def measure_actions(viewer, app, widget, exports: Path, args) -> dict[str, list[float]]:
    """Part 2: stalls idle and per action; returns the longest stall (ms) of each press, by action."""
    longest: dict[str, list[float]] = {}

    def record(action: str, label: str, meter: StallMeter, seconds: float) -> None:
        longest.setdefault(action, []).append(meter.longest_ms)
        print(f"{label} in {seconds:.1f} s: {meter.summary()}")

    idle = StallMeter(viewer)
    with idle:
        pump(app, 3.0)
    print(f"idle, panning and zooming: {idle.summary()}")

    segment, review, export = widget.segment, widget.review, widget.export
    # the first run of a slide loads the model and adds its result layers (the class map, the
    # confidence, and the layers a review takes over); reported apart from the steady runs
    record("first segment", f"first segmentation of the {args.segment_size} px slide (model loaded, "
           "result layers added)", *measure(app, viewer, widget, segment.full_button.click))
    for move, doing in ((False, "camera still"), (True, "panning and zooming")):
        record("segment", f"segmenting {args.segment_size} px, {doing}",
               *measure(app, viewer, widget, segment.full_button.click, move))

    slide_layer = viewer.layers[0]
    for round_ in range(1, args.rounds + 1):
        viewer.reset_view()  # whole-slide zoom: the review takes the whole slide
        viewer.layers.selection.active = slide_layer
        record("review", f"review {round_} of the whole {args.segment_size} px slide",
               *measure(app, viewer, widget, review.review_button.click))
        record("apply", f"apply review {round_} (draft written into the class map)",
               *measure(app, viewer, widget, review.apply_button.click))

    exports.mkdir(exist_ok=True)
    export.training_set.set_text(str(exports / "training-set"))
    export.geojson.set_text(str(exports / "tumor.geojson"))
    export.label_tiff.set_text(str(exports / "labels.tif"))
    for button, what in ((export.set_button, "training set"), (export.geojson_button, "GeoJSON"),
                         (export.tiff_button, "label TIFF")):
        viewer.layers.selection.active = slide_layer
        record("export", f"export the {what}", *measure(app, viewer, widget, button.click))
    return longest


def measure_napari_alone(viewer, app, side: int, rounds: int) -> dict[str, list[float]]:
    """Stalls of napari itself (no plugin code runs) in the same viewer, after the actions: the floor
    under the plugin's figures on this machine's display. Redrawing the same view (a layer's opacity
    nudged), a review's display change done in plain napari calls (a ``side`` x ``side`` array swapped
    into a hidden labels layer, shown, selected, put in paint mode, a turn of the event loop each), and
    adding a labels layer and a shapes layer. Returns the longest stall (ms) of each, by what."""
    longest: dict[str, list[float]] = {}

    def timed(what: str, *steps: Callable[[], None]) -> None:
        meter = StallMeter(viewer, move=False)
        with meter:
            pump(app, LEAD_S)
            for step in steps:
                step()
                pump(app, 0.05)
            pump(app, SETTLE_S)
        longest.setdefault(what, []).append(meter.longest_ms)
        print(f"napari alone, {what}: {meter.summary()}")

    shown = next(layer for layer in reversed(viewer.layers) if layer.visible)
    for _ in range(rounds):
        timed("redrawing the same view", lambda: setattr(shown, "opacity", shown.opacity * 0.99))

    rng = np.random.default_rng(0)
    draft = viewer.add_labels(np.zeros((1, 1), np.uint8), name="napari alone", visible=False)
    slide_layer = viewer.layers[0]
    viewer.layers.selection.active = slide_layer
    pump(app, SETTLE_S)
    for _ in range(rounds):
        data = (rng.random((side, side)) < 0.3).astype(np.uint8)
        timed(f"showing a {side} x {side} array for painting (a review's display)",
              lambda: setattr(draft, "data", data), lambda: setattr(draft, "visible", True),
              lambda: setattr(viewer.layers.selection, "active", draft), lambda: setattr(draft, "mode", "paint"))
        draft.mode = "pan_zoom"
        draft.visible = False
        viewer.layers.selection.active = slide_layer
        pump(app, SETTLE_S)

    labels = np.zeros((side, side), np.uint8)
    rectangle = [[[0, 0], [0, 99], [99, 99], [99, 0]]]
    timed(f"adding a {side} x {side} labels layer", lambda: viewer.add_labels(labels))
    timed("adding a shapes layer", lambda: viewer.add_shapes(rectangle, shape_type="rectangle"))
    return longest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=50_000, help="side of the large slide (px)")
    parser.add_argument("--small", type=int, default=2048, help="side of the small slide (px)")
    parser.add_argument("--segment-size", type=int, default=2048, help="side of the slide segmented (px)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", type=Path, help="SAM-Lung checkpoint (default: a fresh tiny model)")
    parser.add_argument("--sam-weights", type=Path)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="openings timed per slide")
    parser.add_argument("--rounds", type=int, default=4, help="reviews reviewed and applied")
    parser.add_argument("--skip-open", action="store_true", help="measure the stalls only")
    parser.add_argument("--dir", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)

    work = args.dir or Path(tempfile.mkdtemp(prefix="samlung-ui-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SAMLUNG_CONFIG_DIR"] = str(work / "config")  # leave the real settings alone
    os.environ["NAPARI_CONFIG"] = str(work / "napari" / "settings.yaml")  # napari's too

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    print(f"torch {torch.__version__}, napari {napari.__version__}, device {args.device}, folder {work}")
    viewer = napari.Viewer(title="ui latency")
    viewer.window.resize(1400, 900)
    app = QApplication.instance()
    app.processEvents()

    if not args.skip_open:
        measure_open(viewer, app, work, args)
    widget, exports = docked_widget(viewer, work, args)
    longest = measure_actions(viewer, app, widget, exports, args)
    floor = measure_napari_alone(viewer, app, args.segment_size, args.rounds)
    print("longest main-thread stall per action (target < 100 ms): "
          + ", ".join(f"{action} {max(ms):.0f} ms" for action, ms in longest.items()))
    print("median over the presses of each press's longest stall: "
          + ", ".join(f"{action} {statistics.median(ms):.0f} ms ({len(ms)})" for action, ms in longest.items()))
    print("napari alone in the same viewer, median of the longest stalls: "
          + ", ".join(f"{what} {statistics.median(ms):.0f} ms ({len(ms)})" for what, ms in floor.items()))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
