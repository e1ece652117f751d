"""The "Review" panel: correct a region of the segmentation in an editable labels layer.

"Review region" copies the class map inside the current view (or the rectangle chosen in a
Shapes layer) into a draft on disk and shows it as a labels layer whose data is that draft, so
napari's paint, fill, erase and undo write straight to disk. "Apply" writes the draft into the
class map and records the region as reviewed; "Discard" drops it. Drafts left by closing napari
or a crash are offered again ("Resume drafts").
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_samlung.results.drafts import Draft, list_drafts, open_draft, start_review
from napari_samlung.gui._viewer import (
    SlideContext,
    UserError,
    add,
    drawn_box,
    find_draft_layer,
    find_layers,
    show_reviewed,
    slide_of,
    visible_box,
)
from napari_samlung.gui.layers import DRAFT_ID, RESULTS, draft_layer
from napari_samlung.geometry import intersect
from napari_samlung.results.classmap import ClassMap
from napari_samlung.labels import TUMOR

if TYPE_CHECKING:
    from napari_samlung.gui._widget import SamLungWidget

MAX_DRAFT_SIDE = 8192  # class-map pixels: larger regions are too big to paint in one layer


class ReviewPanel(QGroupBox):
    def __init__(self, host: SamLungWidget):
        super().__init__("Review")
        self.host = host
        self.review_button = QPushButton("Review region")
        self.review_button.setToolTip("Edit the segmentation inside the view, or inside the rectangle "
                                      "selected (else drawn last) in a Shapes layer")
        self.review_button.clicked.connect(self.review_region)
        self.apply_button = QPushButton("Apply")
        self.apply_button.clicked.connect(self.apply)
        self.discard_button = QPushButton("Discard")
        self.discard_button.clicked.connect(self.discard)
        self.resume_button = QPushButton("Resume drafts")
        self.resume_button.setEnabled(False)
        self.resume_button.clicked.connect(self.resume_drafts)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        for button in (self.review_button, self.apply_button, self.discard_button, self.resume_button):
            row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.status)

    # -- start --------------------------------------------------------------------------------
    def review_region(self) -> None:
        host = self.host
        with host.user_errors():
            slide = host.current_slide()
            cm = host.classmap(slide, writable=True)
            box = drawn_box(host.viewer, slide) or visible_box(host.viewer, slide)
            inside = intersect(box, (0, 0, *slide.shape))
            if inside is None:
                raise UserError("the region to review lies outside the slide: pan to the tissue or draw a "
                                "rectangle on it")
            cm_box = cm.from_slide(inside)
            if max(cm_box[2:]) > MAX_DRAFT_SIDE:
                raise UserError(f"the region is {cm_box[3]} x {cm_box[2]} class-map pixels; review at most "
                                f"{MAX_DRAFT_SIDE} per side: zoom in or draw a smaller rectangle")
            host.start_job(self._start, cm, cm_box, description="Preparing the review",
                           on_done=partial(self._show_draft, slide))

    @staticmethod
    def _start(cm: ClassMap, box, cancel):
        yield "Copying the region"
        return start_review(cm, box)

    def _show_draft(self, slide: SlideContext, draft: Draft) -> None:
        layer = add(self.host.viewer, draft_layer(draft, slide.frame, slide.path, slide.name))
        layer.selected_label = TUMOR
        layer.brush_size = max(10, min(draft.box[2:]) // 20)
        layer.mode = "paint"
        self.host.viewer.layers.selection.active = layer
        self.status.setText(f"reviewing {draft.box[3]} x {draft.box[2]} px: paint, fill or erase, then Apply")

    # -- finish -------------------------------------------------------------------------------
    def _active_draft(self):
        """The selected draft layer, else the newest one, with its draft."""
        viewer = self.host.viewer
        layer = viewer.layers.selection.active
        if layer is None or layer.metadata.get(DRAFT_ID) is None:
            drafts = find_layers(viewer, "draft")
            if not drafts:
                raise UserError("no review open: press 'Review region' first")
            layer = drafts[-1]
        cm = ClassMap.open(layer.metadata[RESULTS], mode="r+")
        return layer, open_draft(cm, layer.metadata[DRAFT_ID])

    def apply(self) -> None:
        with self.host.user_errors():
            layer, draft = self._active_draft()
            slide = slide_of(self.host.viewer, layer)
            if slide is None:
                raise UserError(f"the slide of {layer.name} is no longer open: "
                                "open it again to apply the review")
            self.host.start_job(self._apply, draft, description="Applying the review",
                                on_done=partial(self._applied, slide, layer))

    @staticmethod
    def _apply(draft: Draft, cancel):
        yield "Writing into the class map"
        return draft.classmap.root, draft.apply()

    def _applied(self, slide: SlideContext, layer, outcome) -> None:
        root, record = outcome
        if layer in self.host.viewer.layers:
            self.host.viewer.layers.remove(layer)
        self.host.results_written(slide, root, now=True)
        show_reviewed(self.host.viewer, slide, root)
        self.status.setText(f"region {record['id']} reviewed")
        show_info(f"{slide.name}: the corrected region is saved and recorded as reviewed")

    def discard(self) -> None:
        with self.host.user_errors():
            layer, draft = self._active_draft()
            self.host.start_job(self._discard, draft, description="Discarding the review",
                                on_done=lambda _: self._discarded(layer))

    @staticmethod
    def _discard(draft: Draft, cancel):
        yield "Removing the draft"
        draft.discard()

    def _discarded(self, layer) -> None:
        if layer in self.host.viewer.layers:
            self.host.viewer.layers.remove(layer)
        self.status.setText("review discarded")

    # -- drafts left from before --------------------------------------------------------------
    def offer_drafts(self, drafts: list[Draft]) -> None:
        waiting = [d for d in drafts if find_draft_layer(self.host.viewer, d.id) is None]
        self.resume_button.setEnabled(bool(waiting))
        self.resume_button.setText(f"Resume drafts ({len(waiting)})" if waiting else "Resume drafts")

    def resume_drafts(self) -> None:
        with self.host.user_errors():
            slide = self.host.current_slide()
            drafts = list_drafts(self.host.classmap(slide, writable=True))
            waiting = [d for d in drafts if find_draft_layer(self.host.viewer, d.id) is None]
            if not waiting:
                raise UserError(f"{slide.name} has no unapplied review drafts")
            for draft in waiting:
                self._show_draft(slide, draft)
            self.offer_drafts(drafts)
