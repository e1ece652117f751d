"""The SAM-Lung dock widget: segment, review, export and fine-tune, for the slides in the viewer.

The widget holds the state of one viewer's session (the shared choices, loaded models, opened
slides, the running job); the panels hold their controls and reach the widget through the contract
of :mod:`~napari_samlung.gui._panel`. Long work runs in napari thread workers
(:class:`~napari_samlung.gui._common.Job`); layers are only touched here, on the main thread.
The modules napari would import on the main thread for the first labels layer are imported in the
background when the widget starts (:func:`~napari_samlung.gui._common.warm_imports`), and the layers
a first review would add are added when a slide's results are shown, one per turn of the event
loop, rather than while the user waits for a review to open.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from napari_samlung.gui._common import Job, report, warm_imports
from napari_samlung.gui._confidence import show_confidence
from napari_samlung.gui._export_panel import ExportPanel
from napari_samlung.gui._finetune_panel import FinetunePanel
from napari_samlung.gui._reader import prefer_this_reader
from napari_samlung.gui._review_panel import ReviewPanel
from napari_samlung.gui._segment_panel import SegmentPanel
from napari_samlung.gui._viewer import (
    SlideContext,
    UserError,
    add_aside,
    current_slide,
    find_layers,
    is_slide_layer,
    missing_review_layers,
    show_classmap,
    show_reviewed,
    show_scale_bar,
)
from napari_samlung.gui.model_cache import PredictorCache
from napari_samlung.gui.settings import WidgetSettings, load_settings, save_settings
from napari_samlung.gui.state import WidgetState
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.drafts import list_drafts
from napari_samlung.results.folders import find_results, results_dir
from napari_samlung.slide import Slide, open_slide

if TYPE_CHECKING:
    import napari

REFRESH_MS = 400  # at most this often, the class-map layers are redrawn while a run writes
PREPARE_MS = 50  # between the layers added ahead of a first review: the viewer draws in between


class SamLungWidget(QWidget):
    """Dock widget: SAM-Lung segmentation, review, export and fine-tuning."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        prefer_this_reader()  # File > Open of a slide picks this plugin from now on, without asking
        self.state = WidgetState.from_settings(load_settings())
        self.models = PredictorCache()
        self.job: Job | None = None
        self._slides: dict[Path, Slide] = {}
        self._mpp: dict[Path, float | None] = {}  # microns per pixel the user entered, by slide file
        self._current: Path | None = None  # the slide the buttons act on, as the panels last heard
        self._stale: set[Path] = set()  # result folders written since the last redraw
        self._checks: set = set()  # running checks of class-map chunks
        self._refresh = QTimer(self)
        self._refresh.setSingleShot(True)
        self._refresh.setInterval(REFRESH_MS)
        self._refresh.timeout.connect(self._redraw)

        self.segment = SegmentPanel(self)
        self.review = ReviewPanel(self)
        self.export = ExportPanel(self)
        self.finetune = FinetunePanel(self)
        self.panels = (self.segment, self.review, self.export, self.finetune)
        self._labels = {param: label for panel in self.panels for param, label in panel.FIELDS.items()}
        self._lay_out()
        for field in dataclasses.fields(WidgetSettings):
            getattr(self.state.events, field.name).connect(self.save_settings)
        self.state.events.project_dir.connect(lambda *_: self._mpp.clear())  # kept µm/px come from the results

        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.selection.events.active.connect(self._check_slide)
        cancel_all = self.cancel_all
        self.destroyed.connect(lambda *_: cancel_all())  # the viewer closed: stop jobs and fine-tuning
        for layer in list(self.viewer.layers):
            if is_slide_layer(layer):
                self.attach(layer)
        self._slide_changed(self._current_path())
        warm_imports()

    def _lay_out(self) -> None:
        """The panels one above the other in a scrolled area: all of them are taller than a laptop's
        screen, and unscrolled they would make napari's window as tall (its canvas then resized, and
        redrawn, whenever a status line gains a line)."""
        panels = QWidget()
        column = QVBoxLayout(panels)
        for panel in self.panels:
            column.addWidget(panel)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(panels)
        scroll.setMinimumWidth(panels.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

    # -- settings, errors, jobs -----------------------------------------------------------------
    def save_settings(self) -> None:
        """Remember the choices of :class:`WidgetSettings` for the next napari session."""
        with self.user_errors():
            save_settings(self.state.settings())

    def field_label(self, param: str) -> str:
        """The label of the field that sets the engine parameter ``param`` (else its own name)."""
        return self._labels.get(param, param)

    @contextlib.contextmanager
    def user_errors(self, on_error: Callable[[Exception], None] | None = None) -> Iterator[None]:
        """Report an error raised inside (:func:`~napari_samlung.gui._common.report`: a user error as
        one line in the widget's words, a bug with its traceback, logged), give it to ``on_error``
        (a panel's status), and go on."""
        try:
            yield
        except Exception as exc:
            report(exc, self.field_label)
            if on_error is not None:
                on_error(exc)

    def start_job(self, function: Callable, *args: Any, description: str,
                  on_yield: Callable[[Any], None] | None = None,
                  on_done: Callable[[Any], None] | None = None,
                  on_error: Callable[[Exception], None] | None = None) -> Job | None:
        """Run one segment/review/export job at a time; a second one is refused with a message."""
        if self.job is not None and self.job.running:
            show_warning("another SAM-Lung job is running: wait for it or press Cancel")
            return None
        self.job = Job(function, *args, description=description, on_yield=on_yield, on_done=on_done,
                       on_end=self._job_ended, label=self.field_label, on_error=on_error)
        return self.job

    def _job_ended(self) -> None:
        self.job = None

    def cancel_job(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def cancel_all(self) -> None:
        self.cancel_job()
        self.finetune.cancel()

    def _busy(self) -> bool:
        """Whether a job or fine-tuning may be reading the opened slides."""
        return (self.job is not None and self.job.running) or self.finetune.running

    # -- slides and their results ---------------------------------------------------------------
    def current_slide(self) -> SlideContext:
        return current_slide(self.viewer)

    def slide_for(self, slide: SlideContext) -> Slide:
        """The slide opened for reading tiles (one per file, shared by the jobs), with the microns
        per pixel the user entered for it (in this session, else as kept in its results)."""
        path = slide.path
        if path not in self._mpp:
            root = find_results(path, self.state.project_dir or None)
            self._mpp[path] = ClassMap.open(root).user_mpp if root is not None else None
        mpp, opened = self._mpp[path], self._slides.get(path)
        if opened is None or (opened.mpp_source == "user") != (mpp is not None) or (mpp and opened.mpp != mpp):
            if opened is not None and not self._busy():
                opened.close()
            self._slides[path] = open_slide(path, mpp=mpp)
        return self._slides[path]

    def set_slide_mpp(self, slide: SlideContext, mpp: float | None) -> None:
        """Use ``mpp`` as the slide's microns per pixel (None: the file's); the slide is opened again
        with it, and its results (if any) keep it."""
        if self._busy():
            raise UserError("wait for the running job to end (or cancel it) before changing {opt:mpp}")
        self._mpp[slide.path] = mpp
        opened = self.slide_for(slide)
        root = find_results(slide.path, self.state.project_dir or None)
        if root is not None:
            ClassMap.open(root, mode="r+").record_slide_mpp(opened.mpp, opened.mpp_source)

    def results_root(self, slide: SlideContext) -> Path:
        """Where the slide's results are (or go): its existing results, else the results folder
        chosen in the widget, else beside the slide."""
        project = self.state.project_dir or None
        return find_results(slide.path, project) or results_dir(slide.path, project)

    def classmap(self, slide: SlideContext, writable: bool = False) -> ClassMap:
        root = self.results_root(slide)
        if not ClassMap.exists(root):
            raise UserError(f"{slide.name} has no segmentation yet (looked in {root}): segment it first")
        return ClassMap.open(root, mode="r+" if writable else "r")

    def results_written(self, slide: SlideContext, root: Path) -> None:
        """A running job wrote into the results in ``root``: show its class map, redraw it (at most
        every ``REFRESH_MS``)."""
        root = Path(root).resolve()
        if not find_layers(self.viewer, "classmap", root):
            show_classmap(self.viewer, slide, ClassMap.open(root))
        self._stale.add(root)
        if not self._refresh.isActive():
            self._refresh.start()

    def show_results(self, slide: SlideContext, source: ClassMap | Path) -> Iterator[None]:
        """A job has finished writing the results ``source`` (their class map, opened by the job, or
        their folder): show and redraw the class map, its confidence and burden, and prepare the
        layers of a review; a step per turn of the event loop (see :class:`Job`)."""
        cm = source if isinstance(source, ClassMap) else ClassMap.open(source)  # opened once here
        root = Path(cm.root).resolve()
        show_classmap(self.viewer, slide, cm)
        self._stale.add(root)
        self._redraw()
        yield
        show_confidence(self.viewer, slide, cm)  # a run's end: its confidence is complete
        self.segment.show_burden()  # a run, an applied review or an import has measured it again
        self._prepare_review(slide, root)

    def _redraw(self) -> None:
        self._refresh.stop()
        stale, self._stale = self._stale, set()
        for root in stale:
            for layer in find_layers(self.viewer, "classmap", root):
                layer.refresh()

    def attach(self, layer) -> None:
        """Show the saved results of a slide layer and offer its unapplied review drafts."""
        slide = SlideContext.of(layer)
        root = find_results(slide.path, self.state.project_dir or None)
        if root is None:
            return
        with self.user_errors():
            cm = ClassMap.open(root)
            show_classmap(self.viewer, slide, cm)
            show_reviewed(self.viewer, slide, cm)
            show_confidence(self.viewer, slide, cm)
            self._prepare_review(slide, cm.root)
            self._check_chunks(slide, cm)
            drafts = list_drafts(cm)  # the Review panel offers them when the slide is the current one
            if drafts:
                show_info(f"{slide.name}: {len(drafts)} review draft(s) not applied yet; "
                          "'Resume drafts' opens them again")

    def _prepare_review(self, slide: SlideContext, root: Path) -> None:
        """Add the layers that a first review and its apply would add (napari takes a few tenths of
        a second for each), one per turn of the event loop, so that the viewer draws in between."""
        def add_next() -> None:
            if slide.layer not in self.viewer.layers or not ClassMap.exists(root):
                return
            missing = missing_review_layers(self.viewer, slide, root)
            if missing:
                add_aside(self.viewer, missing[0])
                QTimer.singleShot(PREPARE_MS, add_next)

        QTimer.singleShot(PREPARE_MS, add_next)

    def _check_chunks(self, slide: SlideContext, cm: ClassMap) -> None:
        """Compare the class map's chunk files with their checksums in a worker (it reads every
        file) and say in one line when some are damaged or missing."""
        def report_damage(damaged: list) -> None:
            if damaged:
                show_warning(f"{slide.name}: {len(damaged)} damaged or missing class-map chunk(s) "
                             f"({cm.damage_summary(damaged)}); segment the slide again to repair them")

        worker = create_worker(cm.damaged_chunks, _start_thread=False)
        worker.returned.connect(report_damage)
        worker.finished.connect(lambda: self._checks.discard(worker))
        self._checks.add(worker)  # a worker nobody holds may be collected before it reports
        worker.start()

    def _current_path(self) -> Path | None:
        try:
            return self.current_slide().path
        except UserError:
            return None

    def _check_slide(self, *_) -> None:
        """Tell the panels when the slide the buttons act on has changed (or none is open now), and
        show the scale bar in µm for a slide placed in micrometres."""
        path = self._current_path()
        if path != self._current:
            self._slide_changed(path)

    def _slide_changed(self, path: Path | None) -> None:
        self._current = path
        if path is not None:
            show_scale_bar(self.viewer, self.current_slide())
        for panel in self.panels:
            panel.slide_changed()

    def _on_inserted(self, event) -> None:
        layer = event.value
        self._check_slide()
        if is_slide_layer(layer):
            # later, so that layers added with it (results from the reader) are in the viewer
            QTimer.singleShot(0, lambda: self.attach(layer) if layer in self.viewer.layers else None)

    def _on_removed(self, event) -> None:
        layer = event.value
        self._check_slide()
        if not is_slide_layer(layer):
            return
        path = Path(layer.metadata["samlung_slide"])
        still_shown = any(is_slide_layer(other) and Path(other.metadata["samlung_slide"]) == path
                          for other in self.viewer.layers)
        if not still_shown:
            self._mpp.pop(path, None)  # read again from the results when the slide is opened again
            if path in self._slides and not self._busy():
                self._slides.pop(path).close()
