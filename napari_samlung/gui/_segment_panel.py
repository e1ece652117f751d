"""The "Segment" panel: model files and settings, the slide's microns per pixel, and the two segment
buttons.

A press plans before any work: the run's worker makes the plan from the checkpoint's configuration
(:func:`model_spec`, :func:`plan_segmentation`, :func:`count_tiles`) before the model loads, so a
refused plan costs no model load; the panel shows the plan, and asks before a run of more than
``ASK_ABOVE`` model tiles. The status line says the outcome of the last action: done, failed (why),
cancelled (after how many tiles), and is cleared when the current slide changes. Under it, the
current slide's tumour burden as stored with its results (measured in the run's worker after a
run, and by a review's Apply), refreshed whenever a job has written the results.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Generator, Iterator, Mapping

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
)

from napari_samlung.errors import SamLungError, word
from napari_samlung.geometry import Box, grow, intersect
from napari_samlung.gui._common import PathEdit, describe, measure_burden
from napari_samlung.gui._viewer import SlideContext, UserError, visible_box
from napari_samlung.gui.model_cache import check_model_files
from napari_samlung.inference.engine import (
    MAX_TILE,
    AlreadyComplete,
    ModelSpec,
    PlanSummary,
    Progress,
    SegmentationParams,
    SegmentationResult,
    count_tiles,
    iter_segment,
    plan_segmentation,
    run_key,
)
from napari_samlung.inference.models import model_spec
from napari_samlung.inference.predictor import resolve_device
from napari_samlung.inference.stitching import TileKind
from napari_samlung.results import burden
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import choose_results
from napari_samlung.slide import Slide

if TYPE_CHECKING:
    from napari_samlung.gui._panel import Host

DEVICES = ("auto", "cuda", "cpu")
CONTEXT = 0.25  # context margin around the visible region, as a share of the model's tile side
MPP_SOURCES = {"aperio": "from the file (Aperio description)", "ome": "from the file (OME metadata)",
               "tiff-resolution": "from the file (TIFF resolution tags)",
               "user": "entered here; kept with the slide's results"}


@dataclass(frozen=True)
class Run:
    """One press of a segment button: what is segmented, with which model, where (for the worker)."""

    context: SlideContext
    slide: Slide
    files: tuple[Path, Path | None]
    device: str
    params: SegmentationParams
    root: Path
    region: Box | None  # level-0 (y, x, h, w); None: the whole slide
    overwrite: bool


class Planned:
    """A run's plan, yielded by the worker to the main thread, which shows it and answers whether
    the run goes on (the worker waits for the answer)."""

    def __init__(self, summary: PlanSummary):
        self.summary = summary
        self._answer: queue.Queue[bool] = queue.Queue(maxsize=1)

    def answer(self, go: bool) -> None:
        self._answer.put(go)

    def wait(self, cancel: threading.Event) -> bool:
        """The main thread's answer; False when the job is cancelled first."""
        while not cancel.is_set():
            try:
                return self._answer.get(timeout=0.1)
            except queue.Empty:
                continue
        return False


@dataclass
class Outcome:
    """What a run came to: its result, or why there is none."""

    run: Run
    result: SegmentationResult | None = None
    skipped: str = ""  # 'complete' (nothing to do), 'declined' or 'cancelled' (before any tile)
    model_tiles: int = 0  # the plan's tiles for the model (for a declined run)


class SegmentPanel(QGroupBox):
    """Model files, device and results folder (shared through the widget's state), the slide's
    microns per pixel, tiling settings, and the two segment buttons."""

    FIELDS: ClassVar[Mapping[str, str]] = {
        "checkpoint": "Checkpoint", "sam_weights": "SAM weights", "device": "Device",
        "results_folder": "Results folder", "mpp": "Slide µm/px", "target_mpp": "Model µm/px",
        "tile_size": "Tile size", "overlap": "Overlap", "batch_size": "Batch size",
        "allow_upsampling": "'allow upsampling'", "overwrite": "'segment again'",
    }
    ASK_ABOVE: ClassVar[int] = 2000  # model tiles: a larger run is asked about first

    def __init__(self, host: Host):
        super().__init__("Segment")
        self.host = host
        self.confirm: Callable[[str], bool] = self._ask  # tests answer in its place
        self._build_model_fields()
        self._build_slide_fields()
        self._build_run_fields()
        self._lay_out()

    # -- controls ---------------------------------------------------------------------------------
    def _build_model_fields(self) -> None:
        state = self.host.state
        self.checkpoint = PathEdit("file", "Checkpoints (*.pt *.pth);;All files (*)",
                                   "SAM-Lung checkpoint (.pt)")
        self.checkpoint.bind(state, "checkpoint")
        self.sam_weights = PathEdit("file", "SAM weights (*.pth *.pt);;All files (*)",
                                    "sam_vit_b_01ec64.pth (not needed for a self-contained checkpoint)")
        self.sam_weights.bind(state, "sam_weights")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setCurrentText(state.device if state.device in DEVICES else "auto")
        state.device = self.device.currentText()  # one the list offers
        self.device.currentTextChanged.connect(partial(setattr, state, "device"))
        state.events.device.connect(self.device.setCurrentText, max_args=1)
        self.project_dir = PathEdit("folder", placeholder="empty: next to each slide")
        self.project_dir.bind(state, "project_dir")

    def _build_slide_fields(self) -> None:
        """The slide's microns per pixel: the file's when it has a trusted value, else what the user
        enters (which also overrides the file's); where it came from, or why it is unknown."""
        self.slide_mpp = _mpp_box(decimals=4, step=0.05, unset="unknown")
        self.slide_mpp.setToolTip("The current slide's microns per pixel. A value entered here replaces the "
                                  "file's for this slide and is kept with its results; 0 goes back to the file's.")
        self.slide_mpp.editingFinished.connect(self._slide_mpp_edited)
        self.slide_mpp_source = QLabel("")
        self.slide_mpp_source.setWordWrap(True)

    def _build_run_fields(self) -> None:
        self.target_mpp = _mpp_box(decimals=3, step=0.25, unset="the checkpoint's")
        self.target_mpp.setToolTip("The resolution the model segments at (the one it was trained at by default)")
        self.tile_size = QSpinBox()
        self.tile_size.setRange(0, MAX_TILE)
        self.tile_size.setSingleStep(16)
        self.tile_size.setSpecialValueText("the model's")
        self.overlap = QSpinBox()
        self.overlap.setRange(-1, 4096)
        self.overlap.setValue(-1)
        self.overlap.setSpecialValueText("tile / 8")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(4)
        self.allow_upsampling = QCheckBox("allow upsampling the slide more than 2x")
        self.overwrite = QCheckBox("segment again where results are complete")
        self.visible_button = QPushButton("Segment visible region")
        self.visible_button.clicked.connect(self.segment_visible)
        self.full_button = QPushButton("Segment full slide")
        self.full_button.clicked.connect(self.segment_full)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.host.cancel_job)
        self.plan = QLabel("")  # the last plan's lines
        self.plan.setWordWrap(True)
        self.status = QLabel("")  # the outcome of the last action
        self.status.setWordWrap(True)
        self.burden = QLabel("")  # the current slide's tumour burden
        self.burden.setWordWrap(True)

    def _lay_out(self) -> None:
        form = QFormLayout(self)
        for param, control in (("checkpoint", self.checkpoint), ("sam_weights", self.sam_weights),
                               ("device", self.device), ("results_folder", self.project_dir),
                               ("mpp", self.slide_mpp)):
            form.addRow(self.FIELDS[param], control)
        form.addRow("", self.slide_mpp_source)
        for param, control in (("target_mpp", self.target_mpp), ("tile_size", self.tile_size),
                               ("overlap", self.overlap), ("batch_size", self.batch_size)):
            form.addRow(self.FIELDS[param], control)
        form.addRow(self.allow_upsampling)
        form.addRow(self.overwrite)
        buttons = QHBoxLayout()
        for button in (self.visible_button, self.full_button, self.cancel_button):
            buttons.addWidget(button)
        form.addRow(buttons)
        form.addRow(self.plan)
        form.addRow(self.status)
        form.addRow(self.burden)

    def params(self) -> SegmentationParams:
        params = SegmentationParams(
            tile_size=self.tile_size.value() or None,
            overlap=None if self.overlap.value() < 0 else self.overlap.value(),
            batch_size=self.batch_size.value(),
            target_mpp=self.target_mpp.value() or None,
            allow_upsampling=self.allow_upsampling.isChecked(),
        )
        params.validate()
        return params

    # -- the slide ----------------------------------------------------------------------------------
    def slide_changed(self) -> None:
        """A new current slide: the last action's status and plan are another slide's."""
        self.status.setText("")
        self.plan.setText("")
        self.show_slide_mpp()
        self.show_burden()

    def show_burden(self) -> None:
        """Show the current slide's tumour burden as stored with its results; say when a change
        since made it out of date; nothing for a slide without results."""
        try:
            cm = self.host.classmap(self.host.current_slide())
        except (SamLungError, OSError):
            self.burden.setText("")
            return
        figures = burden.stored(cm)
        if figures is not None:
            self.burden.setText(figures.line())
        else:
            self.burden.setText("Tumour burden: not measured since the last change" if cm.meta.get(burden.META_KEY)
                                else "")

    def show_slide_mpp(self) -> None:
        """Fill the slide's microns per pixel, and say where it came from (or why it is unknown)."""
        try:
            slide = self.host.slide_for(self.host.current_slide())
        except (SamLungError, OSError) as exc:  # no slide open, or its file cannot be read: say so here
            self.slide_mpp.setEnabled(False)
            self.slide_mpp.setValue(0)
            self.slide_mpp_source.setText(describe(exc, self.host.field_label))
            return
        self.slide_mpp.setEnabled(True)
        self.slide_mpp.setValue(slide.mpp or 0)
        if slide.mpp is not None:
            self.slide_mpp_source.setText(MPP_SOURCES.get(slide.mpp_source, "from the file"))
        else:
            why = slide.mpp_note or "the file does not say"
            self.slide_mpp_source.setText(f"unknown ({why}): enter it to segment at the model's resolution")

    def _slide_mpp_edited(self) -> None:
        """The user entered the slide's microns per pixel (0: back to the file's)."""
        value = round(self.slide_mpp.value(), 4) or None
        with self.host.user_errors(on_error=self._failed):
            context = self.host.current_slide()
            shown = self.host.slide_for(context).mpp
            if value != (round(shown, 4) if shown else None):
                self.host.set_slide_mpp(context, value)
        self.show_slide_mpp()

    # -- segmenting ---------------------------------------------------------------------------------
    def segment_visible(self) -> None:
        self._segment(whole=False)

    def segment_full(self) -> None:
        self._segment(whole=True)

    def _segment(self, whole: bool) -> None:
        """Check here what can be checked at once (files, device, settings, view, results folder),
        then plan and run in a worker."""
        with self.host.user_errors(on_error=self._failed):
            run = self._run_for(whole)
            job = self.host.start_job(self._work, run, description=f"Segmenting {run.context.name}",
                                      on_yield=partial(self._progress, run), on_done=self._done,
                                      on_error=self._failed)
            if job is not None:
                self.plan.setText("")
                self._say("Planning")

    def _run_for(self, whole: bool) -> Run:
        """The run a press asks for; a :class:`SamLungError` for what is wrong before any work."""
        state = self.host.state
        files = check_model_files(state.checkpoint, state.sam_weights)
        resolve_device(state.device)  # CUDA asked for but missing: say so now
        params = self.params()
        context = self.host.current_slide()
        region = None if whole else self._visible_region(context)
        root, notice = choose_results(context.path, state.project_dir or None)
        if notice:
            show_warning(notice)
        return Run(context, self.host.slide_for(context), files, state.device, params, root, region,
                   self.overwrite.isChecked())

    def _visible_region(self, context: SlideContext) -> Box:
        view = visible_box(self.host.viewer, context)
        if intersect(view, (0, 0, *context.shape)) is None:
            raise UserError("the view shows no part of the slide: pan or zoom to the tissue first")
        return view

    def _work(self, run: Run, cancel: threading.Event) -> Generator[object, None, Outcome]:
        """Worker: plan without the model, wait for the go-ahead, then load (or reuse) the model and
        run the engine's generator."""
        yield "Planning"
        spec = model_spec(run.files[0])
        region = _with_context(run, spec)
        plan = plan_segmentation(run.slide, spec, run.params, region)  # refused plans end here
        if plan.whole_slide and not run.overwrite and _complete(run.root, plan.shape):
            yield "Measuring the tumour burden"
            measure_burden(run.root, run.slide, cancel)  # results made before it was measured, or changed since
            return Outcome(run, skipped="complete")
        predictor = self.host.models.peek(*run.files, run.device)  # loaded: count what is done too
        key = run_key(plan, predictor.info, run.params) if predictor is not None else None
        planned = Planned(count_tiles(run.slide, plan, run.params, run.root, key))
        yield planned
        if not planned.wait(cancel):
            skipped = "cancelled" if cancel.is_set() else "declined"
            return Outcome(run, skipped=skipped, model_tiles=planned.summary.tiles.get("model", 0))
        yield "Loading the model"
        predictor = self.host.models.get(*run.files, run.device)
        yield f"Segmenting {run.context.name}"
        try:
            result = yield from iter_segment(run.slide, predictor, run.root, run.params, region=region,
                                             overwrite=run.overwrite, cancel=cancel)
        except AlreadyComplete:
            return Outcome(run, skipped="complete")
        ClassMap.open(run.root, mode="r+").record_slide_mpp(run.slide.mpp, run.slide.mpp_source)
        if result.status == "complete":
            yield "Measuring the tumour burden"
            measure_burden(run.root, run.slide, cancel)
        return Outcome(run, result)

    # -- the main thread's side of a run ----------------------------------------------------------
    def _progress(self, run: Run, event) -> None:
        if isinstance(event, str):
            self._say(event)
        elif isinstance(event, Planned):
            self._show_plan(run, event)
        elif isinstance(event, Progress):
            self._say(f"{event.phase}: {event.done}/{event.total} tiles")
            if event.written:
                self.host.results_written(run.context, run.root)

    def _show_plan(self, run: Run, planned: Planned) -> None:
        """Show the plan; let a run over :attr:`ASK_ABOVE` model tiles go on only if the user says so."""
        go = False
        try:
            summary = planned.summary
            lines = [word(line, self.host.field_label) for line in summary.lines()]
            self.plan.setText("\n".join([f"results: {run.root}", *lines]))
            for note in summary.plan.notes:
                show_warning(word(note, self.host.field_label))
            tiles = summary.tiles.get("model", 0)
            go = tiles <= self.ASK_ABOVE or self.confirm(
                f"Segmenting {run.context.name} runs the model on {tiles:,} tiles, which can take long.\n\n"
                + "\n".join(lines) + "\n\nSegment it now?")
        finally:  # the worker waits for an answer, whatever happens here
            planned.answer(go)

    def _ask(self, question: str) -> bool:
        reply = QMessageBox.question(self, "SAM-Lung: a large run", question)
        return reply == QMessageBox.StandardButton.Yes

    def _done(self, outcome: Outcome) -> Iterator[None]:
        run, result = outcome.run, outcome.result
        if ClassMap.exists(run.root):
            yield from self.host.show_results(run.context, run.root)
        if result is None:
            self._skipped(outcome)
            return
        tiles = result.tiles
        if result.status == "cancelled":
            summary = _cancelled(result, self.full_button if run.region is None else self.visible_button)
        else:
            summary = (f"{result.status}: {tiles.get('model', 0)} tiles, {tiles.get('background', 0)} no tissue, "
                       f"{tiles.get('done', 0)} resumed, {result.seconds:.1f} s")
        self._say(summary)
        show_info(f"{run.context.name}: {summary}")

    def _skipped(self, outcome: Outcome) -> None:
        name = outcome.run.context.name
        if outcome.skipped == "complete":
            self._say("already complete")
            show_info(f"{name}: the whole slide is already segmented (tick 'segment again' to redo it)")
        elif outcome.skipped == "declined":
            self._say(f"not started: you declined a run of {outcome.model_tiles:,} model tiles")
        else:
            self._say("cancelled before any tile was segmented")

    def _failed(self, error: Exception) -> None:
        self._say("failed: " + describe(error, self.host.field_label))

    def _say(self, text: str) -> None:
        self.status.setText(text)


def _with_context(run: Run, spec: ModelSpec) -> Box | None:
    """The visible region grown by :data:`CONTEXT` of a tile, so objects at the view's edge are seen
    whole (None: the whole slide)."""
    if run.region is None:
        return None
    plan = plan_segmentation(run.slide, spec, run.params)  # the run's tile side and scale
    return intersect(grow(run.region, round(CONTEXT * plan.tile * plan.scale)), (0, 0, *run.context.shape))


def _cancelled(result: SegmentationResult, button: QPushButton) -> str:
    """The status of a cancelled run: the work done (not the planned counts), and how to resume."""
    tiles = result.tiles
    total = sum(tiles.get(kind.value, 0) for kind in TileKind)
    kept = "finished rows are kept" if result.plan.whole_slide else "finished chunks are kept"
    return f"cancelled after {tiles.get('processed', 0)} of {total} tiles; {kept} — press '{button.text()}' to resume"


def _complete(root: Path, shape: tuple[int, int]) -> bool:
    """Whether ``root`` holds a whole complete class map of this shape (a whole-slide run has nothing
    to do); one with damaged or lost chunks is not: the run repairs them. Reads every chunk file:
    called in the worker."""
    if not ClassMap.exists(root):
        return False
    cm = ClassMap.open(root)
    return cm.status == "complete" and tuple(cm.shape) == shape and not cm.damaged_chunks()


def _mpp_box(decimals: int, step: float, unset: str) -> QDoubleSpinBox:
    """A microns-per-pixel field; 0 shows ``unset`` (no value given)."""
    box = QDoubleSpinBox()
    box.setRange(0.0, 100.0)
    box.setDecimals(decimals)
    box.setSingleStep(step)
    box.setSuffix(" µm/px")
    box.setSpecialValueText(unset)
    return box
