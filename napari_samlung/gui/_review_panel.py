"""The "Review" panel: correct a region of the segmentation in an editable labels layer.

"Review region" copies the class map inside the current view (or the rectangle chosen in a
Shapes layer) into a draft on disk and shows it as a labels layer whose data is that draft, so
napari's paint, fill, erase and undo write straight to disk. "Apply" writes the draft into the
class map and records the region as reviewed; "Discard" drops it. Drafts left by closing napari
or a crash are offered again ("Resume drafts").

A review is of a field, not of a slide: a region wider or taller than ``MAX_REVIEW_SIDE`` pixels at
the model's resolution is refused (zoom in or draw a rectangle), and a region with parts no run has
segmented is asked about first, since applying it marks all of it as reviewed and later runs then
leave it as it is. A reviewed region can be taken off the record again ("Remove reviewed region");
its pixels stay. "Outlines" shows the class map as class outlines, which read on H&E. The status
line says the outcome of the last action and is cleared when the current slide changes.

"Next suggestion" points the view at the segmented field (one model tile) with the lowest mean
confidence that is neither reviewed nor open in a draft, and opens a review draft there; the
ranking is made again at every press, so applied and open reviews leave it.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generator, Iterator, Mapping

from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
)

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box, intersect
from napari_samlung.gui._common import describe, measure_burden
from napari_samlung.gui._viewer import (
    SlideContext,
    UserError,
    drawn_box,
    find_draft_layer,
    find_layers,
    frame_rectangle,
    outline,
    put_aside,
    show_draft,
    show_reviewed,
    slide_of,
    visible_box,
)
from napari_samlung.gui.layers import DRAFT_ID, RESULTS, ROLE
from napari_samlung.inference.suggestions import Field, ranked_fields
from napari_samlung.labels import TUMOR
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import ConfidenceMap, ConfidenceMissing
from napari_samlung.results.drafts import MAX_REVIEW_SIDE, Draft, list_drafts, open_draft, start_review

if TYPE_CHECKING:
    from napari_samlung.gui._panel import Host


class ReviewPanel(QGroupBox):
    """Review a region in an editable draft layer, apply or discard it, resume old drafts, take a
    reviewed region off the record, show the segmentation as outlines."""

    FIELDS: ClassVar[Mapping[str, str]] = {}  # no engine parameters: its region is the view or a drawn box

    def __init__(self, host: Host):
        super().__init__("Review")
        self.host = host
        self.confirm: Callable[[str], bool] = self._ask  # tests answer in its place
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
        self.regions = QComboBox()
        self.regions.setToolTip("The slide's reviewed regions; choosing one shows it")
        self.regions.activated.connect(self._show_region)
        self.remove_button = QPushButton("Remove reviewed region")
        self.remove_button.setToolTip("Take the chosen region off the reviewed record: its pixels stay as "
                                      "they are, but later segmentation runs may change them")
        self.remove_button.setEnabled(False)
        self.remove_button.clicked.connect(self.remove_region)
        self.next_button = QPushButton("Next suggestion")
        self.next_button.setToolTip("Go to the segmented field where the model was least sure that is not "
                                    "reviewed yet, and open a review there (the confidence layer shows "
                                    "where the model was unsure)")
        self.next_button.clicked.connect(self.next_suggestion)
        self.outlines = QCheckBox("Outlines")
        self.outlines.setToolTip("Show the segmentation as class outlines, which read better on H&E")
        self.outlines.toggled.connect(self.show_outlines)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widgets in ((self.review_button, self.apply_button, self.discard_button, self.resume_button),
                        (self.regions, self.remove_button), (self.next_button, self.outlines)):
            row = QHBoxLayout()
            for widget in widgets:
                row.addWidget(widget)
            layout.addLayout(row)
        layout.addWidget(self.status)
        host.viewer.layers.events.inserted.connect(self._on_inserted)

    # -- the current slide --------------------------------------------------------------------
    def slide_changed(self) -> None:
        """A new current slide: the last action's status is another slide's; offer this slide's
        reviewed regions and drafts."""
        self._say("")
        try:
            slide = self.host.current_slide()
        except UserError:
            slide = None
        cm = self._classmap_of(slide)
        self._list_regions(cm, slide)
        self.offer_drafts(list_drafts(cm) if cm is not None else [])

    def _classmap_of(self, slide: SlideContext | None) -> ClassMap | None:
        """The slide's class map, or None when it has none (or it cannot be read: a button says why)."""
        if slide is None:
            return None
        try:
            return self.host.classmap(slide)
        except SamLungError:
            return None

    # -- start --------------------------------------------------------------------------------
    def review_region(self) -> None:
        host = self.host
        with host.user_errors(on_error=self._failed):
            slide = host.current_slide()
            cm = host.classmap(slide, writable=True)
            box = self._region(slide, cm)
            if not self._segmented_or_agreed(cm, box):
                return
            job = host.start_job(self._start, cm, box, description="Preparing the review",
                                 on_done=partial(self._show_draft, slide), on_error=self._failed)
            if job is not None:
                self._say(f"copying {box[3]} x {box[2]} px for review")

    def _region(self, slide: SlideContext, cm: ClassMap) -> Box:
        """The class-map box to review: the chosen rectangle, else the view, on the slide and not
        larger than :data:`MAX_REVIEW_SIDE` a side."""
        viewer = self.host.viewer
        inside = intersect(drawn_box(viewer, slide) or visible_box(viewer, slide), (0, 0, *slide.shape))
        if inside is None:
            raise UserError("the region to review lies outside the slide: pan to the tissue or draw a "
                            "rectangle on it")
        box = cm.clip(cm.from_slide(inside))
        if max(box[2:]) > MAX_REVIEW_SIDE:  # the engine's limit, checked before anything is asked or made
            raise UserError(f"the region is {box[3]} x {box[2]} px at the model's resolution, more than "
                            f"{MAX_REVIEW_SIDE} x {MAX_REVIEW_SIDE}: zoom in, or draw a smaller rectangle "
                            "to review")
        return box

    def _segmented_or_agreed(self, cm: ClassMap, box: Box) -> bool:
        """Whether the region is all segmented, or the user agrees to review its unsegmented part."""
        unsegmented = 1.0 - cm.segmented_fraction(box)
        if unsegmented <= 0:
            return True
        percent = max(1, round(100 * unsegmented))
        if self.confirm(f"{percent}% of this region has not been segmented yet. Applying a review marks "
                        "the whole region as reviewed, and later segmentation runs leave it as it is.\n\n"
                        "Review it anyway?"):
            return True
        self._say(f"cancelled: {percent}% of the region is not segmented yet; segment it first, or draw a "
                  "rectangle on segmented tissue")
        return False

    def _ask(self, question: str) -> bool:
        reply = QMessageBox.question(self, "SAM-Lung: review an unsegmented region", question,
                                     QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                     QMessageBox.StandardButton.No)
        return reply == QMessageBox.StandardButton.Yes

    @staticmethod
    def _start(cm: ClassMap, box: Box, cancel) -> Generator[str, None, Draft]:
        yield "Copying the region"
        return start_review(cm, box)

    def _show_draft(self, slide: SlideContext, draft: Draft) -> Iterator[None]:
        """Show ``draft`` in its layer, ready to paint; a step per turn of the event loop (napari
        slices and draws the draft when it turns visible, and repaints its controls on selection)."""
        viewer = self.host.viewer
        layer = show_draft(viewer, slide, draft)
        yield
        layer.visible = True
        yield
        viewer.layers.selection.active = layer  # napari swaps in the labels controls
        yield
        layer.selected_label = TUMOR
        layer.brush_size = max(10, min(draft.box[2:]) // 20)
        layer.mode = "paint"
        self._say(f"reviewing {draft.box[3]} x {draft.box[2]} px: paint, fill or erase, "
                  "then Apply or Discard")

    # -- where to look next -------------------------------------------------------------------
    def next_suggestion(self) -> None:
        """Open a review of the least confident field that is not reviewed nor open in a draft."""
        host = self.host
        with host.user_errors(on_error=self._failed):
            slide = host.current_slide()
            cm = host.classmap(slide, writable=True)
            try:
                confidence = ConfidenceMap.open_for(cm)
            except ConfidenceMissing:
                raise UserError(f"{slide.name}: its results have no confidence map (made by an earlier version): "
                                "segment the full slide again with {opt:overwrite} on to make one; reviewed "
                                "regions stay as they are") from None
            job = host.start_job(self._suggest, cm, confidence, description="Finding the next field to review",
                                 on_done=partial(self._suggested, slide), on_error=self._failed)
            if job is not None:
                self._say("finding the least confident field not yet reviewed")

    @staticmethod
    def _suggest(cm: ClassMap, confidence: ConfidenceMap,
                 cancel) -> Generator[str, None, tuple[Field, int, Draft] | None]:
        yield "Ranking the fields by confidence"
        drafts = [draft.box for draft in list_drafts(cm)]
        fields = [f for f in ranked_fields(cm, confidence) if not any(intersect(f.box, b) for b in drafts)]
        if not fields:
            return None
        yield "Copying the field"
        return fields[0], len(fields) - 1, start_review(cm, fields[0].box)

    def _suggested(self, slide: SlideContext, outcome: tuple[Field, int, Draft] | None) -> Iterator[None]:
        if outcome is None:
            self._say("no suggestion: every segmented field is reviewed or open in a draft")
            return
        field, left, draft = outcome
        frame_rectangle(self.host.viewer, slide.frame.box_to_world_rect(field.box, draft.classmap.scale))
        yield from self._show_draft(slide, draft)
        self._say(f"suggested field: mean confidence {field.confidence:.2f} ({left} more after it); paint, "
                  "fill or erase, then Apply or Discard")

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
        with self.host.user_errors(on_error=self._failed):
            layer, draft = self._active_draft()
            slide = slide_of(self.host.viewer, layer)
            if slide is None:
                raise UserError(f"the slide of {layer.name} is no longer open: "
                                "open it again to apply the review")
            job = self.host.start_job(self._apply, draft, description="Applying the review",
                                      on_done=partial(self._applied, slide, layer), on_error=self._failed)
            if job is not None:
                self._say("applying the review")

    @staticmethod
    def _apply(draft: Draft, cancel) -> Generator[str, None, tuple[ClassMap, dict[str, Any]]]:
        yield "Writing into the class map"
        record = draft.apply()
        yield "Measuring the tumour burden"
        measure_burden(draft.classmap.root, cancel=cancel)
        return draft.classmap, record  # its record read here, so the main thread reads nothing

    def _applied(self, slide: SlideContext, layer, outcome: tuple[ClassMap, dict[str, Any]]) -> Iterator[None]:
        cm, record = outcome
        put_aside(self.host.viewer, layer)
        yield
        yield from self.host.show_results(slide, cm)
        yield
        show_reviewed(self.host.viewer, slide, cm)
        yield
        self._list_regions(cm, slide)
        self._say(f"done: {self._region_name(cm, record['id'])} reviewed")
        show_info(f"{slide.name}: the corrected region is saved and recorded as reviewed")

    def discard(self) -> None:
        with self.host.user_errors(on_error=self._failed):
            layer, draft = self._active_draft()
            job = self.host.start_job(self._discard, draft, description="Discarding the review",
                                      on_done=lambda _: self._discarded(layer), on_error=self._failed)
            if job is not None:
                self._say("discarding the review")

    @staticmethod
    def _discard(draft: Draft, cancel) -> Generator[str, None, None]:
        yield "Removing the draft"
        draft.discard()

    def _discarded(self, layer) -> None:
        put_aside(self.host.viewer, layer)
        self._say("done: review discarded")

    # -- reviewed regions ---------------------------------------------------------------------
    def _list_regions(self, cm: ClassMap | None, slide: SlideContext | None) -> None:
        """Offer the reviewed regions of ``cm`` (the current slide's) to choose from."""
        self.regions.clear()
        for record in cm.reviewed if cm is not None and slide is not None else []:
            y, x, h, w = cm.to_slide(tuple(record["box"]))
            corners = slide.frame.box_to_world_rect(tuple(record["box"]), cm.scale)
            self.regions.addItem(f"{self._region_name(cm, record['id'])}: {w} x {h} px at x {x}, y {y}",
                                 (record["id"], corners))
        self.remove_button.setEnabled(self.regions.count() > 0)

    @staticmethod
    def _region_name(cm: ClassMap, region_id: str) -> str:
        number = next((i for i, record in enumerate(cm.reviewed, 1) if record["id"] == region_id), 0)
        return f"region {number}"

    def _show_region(self, index: int) -> None:
        """Point the view at the region chosen in the list, so the user sees which one it is."""
        _region_id, corners = self.regions.itemData(index)
        frame_rectangle(self.host.viewer, corners)

    def remove_region(self) -> None:
        """Take the chosen reviewed region off the record (its pixels stay as they are)."""
        host = self.host
        with host.user_errors(on_error=self._failed):
            if self.regions.currentIndex() < 0:
                raise UserError("no reviewed region to remove: choose one in the list first")
            region_id, _corners = self.regions.currentData()
            slide = host.current_slide()
            cm = host.classmap(slide, writable=True)
            name = self._region_name(cm, region_id)
            job = host.start_job(self._remove, cm, region_id, description="Removing a reviewed region",
                                 on_done=partial(self._removed, slide, name), on_error=self._failed)
            if job is not None:
                self._say(f"removing {name}")

    @staticmethod
    def _remove(cm: ClassMap, region_id: str, cancel) -> Generator[str, None, ClassMap]:
        yield "Removing the reviewed region"
        cm.remove_reviewed(region_id)
        return cm

    def _removed(self, slide: SlideContext, name: str, cm: ClassMap) -> None:
        show_reviewed(self.host.viewer, slide, cm)
        self._list_regions(cm, slide)
        self._say(f"done: {name} is no longer reviewed; its pixels stay as they are, and later "
                  "segmentation runs may change them")

    # -- outlines -----------------------------------------------------------------------------
    def show_outlines(self, on: bool) -> None:
        """Show every class-map layer as outlines (``on``) or filled."""
        for layer in find_layers(self.host.viewer, "classmap"):
            outline(layer, on)

    def _on_inserted(self, event) -> None:
        layer = event.value
        if self.outlines.isChecked() and layer.metadata.get(ROLE) == "classmap":
            outline(layer, True)

    # -- drafts left from before --------------------------------------------------------------
    def offer_drafts(self, drafts: list[Draft]) -> None:
        waiting = [d for d in drafts if find_draft_layer(self.host.viewer, d.id) is None]
        self.resume_button.setEnabled(bool(waiting))
        self.resume_button.setText(f"Resume drafts ({len(waiting)})" if waiting else "Resume drafts")

    def resume_drafts(self) -> None:
        with self.host.user_errors(on_error=self._failed):
            slide = self.host.current_slide()
            drafts = list_drafts(self.host.classmap(slide, writable=True))
            waiting = [d for d in drafts if find_draft_layer(self.host.viewer, d.id) is None]
            if not waiting:
                raise UserError(f"{slide.name} has no unapplied review drafts")
            for draft in waiting:
                for _step in self._show_draft(slide, draft):
                    pass
            self.offer_drafts(drafts)
            if len(waiting) > 1:
                self._say(f"reviewing {len(waiting)} drafts: paint, fill or erase, "
                          "then Apply or Discard each")

    # -- status -------------------------------------------------------------------------------
    def _failed(self, error: Exception) -> None:
        self._say("failed: " + describe(error, self.host.field_label))

    def _say(self, text: str) -> None:
        self.status.setText(text)
