"""The SAM-Lung dock widget: segment, review, export and fine-tune, for the slides in the viewer.

The widget holds the state of one viewer's session (settings, loaded models, opened slides, the
running job); the panels hold their controls. Long work runs in napari thread workers
(:class:`~napari_samlung.gui._common.Job`); layers are only touched here, on the main thread.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_samlung.results.drafts import list_drafts
from napari_samlung.gui._common import USER_ERRORS, Job, user_message
from napari_samlung.gui._export_panel import ExportPanel
from napari_samlung.gui._finetune_panel import FinetunePanel
from napari_samlung.gui._review_panel import ReviewPanel
from napari_samlung.gui._segment_panel import SegmentPanel
from napari_samlung.gui._viewer import (
    SlideContext,
    current_slide,
    find_layers,
    is_slide_layer,
    show_classmap,
    show_reviewed,
)
from napari_samlung.gui.model_cache import PredictorCache
from napari_samlung.gui.settings import load_settings, save_settings
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import find_results, results_dir
from napari_samlung.slide import Slide, open_slide

if TYPE_CHECKING:
    import napari

REFRESH_MS = 400  # at most this often, the class-map layers are redrawn while a run writes


class SamLungWidget(QWidget):
    """Dock widget: SAM-Lung segmentation, review, export and fine-tuning."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.settings = load_settings()
        self.models = PredictorCache()
        self.job: Job | None = None
        self._slides: dict[Path, Slide] = {}
        self._stale: set[Path] = set()  # result folders written since the last redraw
        self._refresh = QTimer(self)
        self._refresh.setSingleShot(True)
        self._refresh.setInterval(REFRESH_MS)
        self._refresh.timeout.connect(self._redraw)

        self.segment = SegmentPanel(self)
        self.review = ReviewPanel(self)
        self.export = ExportPanel(self)
        self.finetune = FinetunePanel(self)
        layout = QVBoxLayout(self)
        for panel in (self.segment, self.review, self.export, self.finetune):
            layout.addWidget(panel)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        cancel_all = self.cancel_all
        self.destroyed.connect(lambda *_: cancel_all())  # the viewer closed: stop jobs and fine-tuning
        for layer in list(self.viewer.layers):
            if is_slide_layer(layer):
                self.attach(layer)

    # -- settings, errors, jobs -----------------------------------------------------------------
    def save_settings(self) -> None:
        with self.user_errors():
            save_settings(self.settings)

    @contextlib.contextmanager
    def user_errors(self) -> Iterator[None]:
        """Show a user error as one message and go on (nothing was changed)."""
        try:
            yield
        except USER_ERRORS as exc:
            show_error(user_message(exc))

    def start_job(self, function: Callable, *args: Any, description: str, on_yield=None,
                  on_done=None) -> Job | None:
        """Run one segment/review/export job at a time; a second one is refused with a message."""
        if self.job is not None and self.job.running:
            show_warning("another SAM-Lung job is running: wait for it or press Cancel")
            return None
        self.job = Job(function, *args, description=description, on_yield=on_yield, on_done=on_done,
                       on_end=self._job_ended)
        return self.job

    def _job_ended(self) -> None:
        self.job = None

    def cancel_job(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def cancel_all(self) -> None:
        self.cancel_job()
        self.finetune.cancel()

    # -- slides and their results ---------------------------------------------------------------
    def current_slide(self) -> SlideContext:
        return current_slide(self.viewer)

    def slide_for(self, slide: SlideContext) -> Slide:
        """The slide opened for reading tiles (one per file, shared by the jobs)."""
        if slide.path not in self._slides:
            self._slides[slide.path] = open_slide(slide.path)
        return self._slides[slide.path]

    def results_root(self, slide: SlideContext) -> Path:
        """Where the slide's results are (or go): its existing results, else the results folder
        chosen in the widget, else beside the slide."""
        project = self.settings.project_dir or None
        return find_results(slide.path, project) or results_dir(slide.path, project)

    def classmap(self, slide: SlideContext, writable: bool = False) -> ClassMap:
        root = self.results_root(slide)
        if not ClassMap.exists(root):
            raise ValueError(f"{slide.name} has no segmentation yet (looked in {root}): segment it first")
        return ClassMap.open(root, mode="r+" if writable else "r")

    def results_written(self, slide: SlideContext, root: Path, now: bool = False) -> None:
        """A job wrote into ``root``: show its class map, and redraw it (throttled unless ``now``)."""
        key = Path(root).resolve()
        if not find_layers(self.viewer, "classmap", key) or now:
            show_classmap(self.viewer, slide, key)
        self._stale.add(key)
        if now:
            self._redraw()
        elif not self._refresh.isActive():
            self._refresh.start()

    def _redraw(self) -> None:
        self._refresh.stop()
        stale, self._stale = self._stale, set()
        for root in stale:
            for layer in find_layers(self.viewer, "classmap", root):
                layer.refresh()

    def attach(self, layer) -> None:
        """Show the saved results of a slide layer and offer its unapplied review drafts."""
        slide = SlideContext.of(layer)
        root = find_results(slide.path, self.settings.project_dir or None)
        if root is None:
            return
        with self.user_errors():
            cm = ClassMap.open(root)
            show_classmap(self.viewer, slide, cm)
            show_reviewed(self.viewer, slide, cm)
            drafts = list_drafts(cm)
            self.review.offer_drafts(drafts)
            if drafts:
                show_info(f"{slide.name}: {len(drafts)} review draft(s) not applied yet; "
                          "'Resume drafts' opens them again")

    def _on_inserted(self, event) -> None:
        layer = event.value
        if is_slide_layer(layer):
            # later, so that layers added with it (results from the reader) are in the viewer
            QTimer.singleShot(0, lambda: self.attach(layer) if layer in self.viewer.layers else None)

    def _on_removed(self, event) -> None:
        layer = event.value
        if not is_slide_layer(layer):
            return
        path = Path(layer.metadata["samlung_slide"])
        still_shown = any(is_slide_layer(other) and Path(other.metadata["samlung_slide"]) == path
                          for other in self.viewer.layers)
        busy = (self.job is not None and self.job.running) or self.finetune.running
        if not still_shown and path in self._slides and not busy:
            self._slides.pop(path).close()

