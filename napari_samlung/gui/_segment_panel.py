"""The "Segment" panel: model files and settings, segment the visible region or the whole slide."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from napari_samlung.gui._common import PathEdit
from napari_samlung.gui._viewer import UserError, visible_box
from napari_samlung.geometry import grow
from napari_samlung.gui.model_cache import check_model_files
from napari_samlung.geometry import intersect
from napari_samlung.results.classmap import ClassMap
from napari_samlung.inference.engine import AlreadyComplete, Progress, SegmentationParams, iter_segment
from napari_samlung.inference.predictor import resolve_device

if TYPE_CHECKING:
    from napari_samlung.gui._widget import SamLungWidget

DEVICES = ("auto", "cuda", "cpu")
CONTEXT = 0.25  # context margin around the visible region, as a share of the model's tile side


class SegmentPanel(QGroupBox):
    def __init__(self, host: SamLungWidget):
        super().__init__("Segment")
        self.host = host
        settings = host.settings
        self.checkpoint = PathEdit("file", "Checkpoints (*.pt *.pth);;All files (*)",
                                   "SAM-Lung checkpoint (.pt)")
        self.checkpoint.edit.setText(settings.checkpoint)
        self.sam_weights = PathEdit("file", "SAM weights (*.pth *.pt);;All files (*)",
                                    "sam_vit_b_01ec64.pth (not needed for a self-contained checkpoint)")
        self.sam_weights.edit.setText(settings.sam_weights)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setCurrentText(settings.device if settings.device in DEVICES else "auto")
        self.project_dir = PathEdit("folder", placeholder="empty: next to each slide")
        self.project_dir.edit.setText(settings.project_dir)
        for picker in (self.checkpoint, self.sam_weights, self.project_dir):
            picker.changed.connect(lambda _text: self.remember())
        self.device.currentTextChanged.connect(lambda _text: self.remember())

        self.mpp = QDoubleSpinBox()
        self.mpp.setRange(0.0, 100.0)
        self.mpp.setDecimals(3)
        self.mpp.setSingleStep(0.25)
        self.mpp.setSuffix(" µm/px")
        self.mpp.setSpecialValueText("the checkpoint's")
        self.tile_size = QSpinBox()
        self.tile_size.setRange(0, 8192)
        self.tile_size.setSingleStep(16)
        self.tile_size.setSpecialValueText("the model's")
        self.overlap = QSpinBox()
        self.overlap.setRange(-1, 4096)
        self.overlap.setValue(-1)
        self.overlap.setSpecialValueText("tile / 8")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(4)
        self.overwrite = QCheckBox("segment again where results are complete")

        self.visible_button = QPushButton("Segment visible region")
        self.visible_button.clicked.connect(self.segment_visible)
        self.full_button = QPushButton("Segment full slide")
        self.full_button.clicked.connect(self.segment_full)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(host.cancel_job)
        self.status = QLabel("")

        form = QFormLayout(self)
        form.addRow("Checkpoint", self.checkpoint)
        form.addRow("SAM weights", self.sam_weights)
        form.addRow("Device", self.device)
        form.addRow("Results folder", self.project_dir)
        form.addRow("Resolution", self.mpp)
        form.addRow("Tile size", self.tile_size)
        form.addRow("Overlap", self.overlap)
        form.addRow("Batch size", self.batch_size)
        form.addRow(self.overwrite)
        buttons = QHBoxLayout()
        for button in (self.visible_button, self.full_button, self.cancel_button):
            buttons.addWidget(button)
        form.addRow(buttons)
        form.addRow(self.status)

    def remember(self) -> None:
        settings = self.host.settings
        settings.checkpoint, settings.sam_weights = self.checkpoint.text(), self.sam_weights.text()
        settings.device, settings.project_dir = self.device.currentText(), self.project_dir.text()
        self.host.save_settings()

    def params(self) -> SegmentationParams:
        params = SegmentationParams(
            tile_size=self.tile_size.value() or None,
            overlap=None if self.overlap.value() < 0 else self.overlap.value(),
            batch_size=self.batch_size.value(),
            target_mpp=self.mpp.value() or None,
        )
        params.validate()
        return params

    def segment_visible(self) -> None:
        self._segment(whole=False)

    def segment_full(self) -> None:
        self._segment(whole=True)

    def _segment(self, whole: bool) -> None:
        """Check everything that can be checked here, then run the engine in a worker."""
        with self.host.user_errors():
            files = check_model_files(self.checkpoint.text(), self.sam_weights.text())
            resolve_device(self.device.currentText())  # CUDA asked for but missing: say so now
            params = self.params()
            slide_ctx = self.host.current_slide()
            region = None
            if not whole:
                view = visible_box(self.host.viewer, slide_ctx)
                if intersect(view, (0, 0, *slide_ctx.shape)) is None:
                    raise UserError("the view shows no part of the slide: pan or zoom to the tissue first")
                region = view
            root = self.host.results_root(slide_ctx)
            slide = self.host.slide_for(slide_ctx)
            self.host.start_job(self._run, slide_ctx, slide, files, self.device.currentText(), params, root,
                                region, self.overwrite.isChecked(),
                                description=f"Segmenting {slide_ctx.name}",
                                on_yield=partial(self._progress, slide_ctx, root), on_done=self._done)

    def _run(self, slide_ctx, slide, files, device, params, root, region, overwrite, cancel):
        """Worker: load (or reuse) the model, then the engine's generator."""
        yield "Loading the model"
        predictor = self.host.models.get(*files, device)
        if region is not None:  # add context so objects at the view's edge are seen whole
            tile = params.tile_size or predictor.tile_size
            mpp = params.target_mpp or predictor.mpp
            scale = mpp / slide.mpp if mpp and slide.mpp else 1.0
            region = intersect(grow(region, round(CONTEXT * tile * scale)), (0, 0, *slide_ctx.shape))
        yield f"Segmenting {slide_ctx.name}"
        try:
            result = yield from iter_segment(slide, predictor, root, params, region=region,
                                             overwrite=overwrite, cancel=cancel)
        except AlreadyComplete:
            return slide_ctx, root, None
        return slide_ctx, root, result

    def _progress(self, slide_ctx, root, event) -> None:
        if isinstance(event, str):
            self.status.setText(event)
        elif isinstance(event, Progress):
            self.status.setText(f"{event.phase}: {event.done}/{event.total} tiles")
            if event.written:
                self.host.results_written(slide_ctx, root)

    def _done(self, outcome) -> None:
        slide_ctx, root, result = outcome
        if ClassMap.exists(root):
            self.host.results_written(slide_ctx, root, now=True)
        if result is None:
            self.status.setText("already complete")
            show_info(f"{slide_ctx.name}: the whole slide is already segmented "
                      "(tick 'segment again' to redo it)")
            return
        for note in result.plan.notes if result.plan else []:
            show_warning(note)
        tiles = result.tiles
        summary = (f"{result.status}: {tiles.get('model', 0)} tiles, {tiles.get('background', 0)} no tissue, "
                   f"{tiles.get('done', 0)} resumed, {result.seconds:.1f} s")
        self.status.setText(summary)
        show_info(f"{slide_ctx.name}: {summary}")
