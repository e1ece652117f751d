"""The "Export" panel: reviewed regions to a training set, the class map to GeoJSON and label TIFF.

Empty paths mean the defaults inside the slide's result folder. Every export runs in a worker
and is written atomically by the annotations module.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Generator

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton

from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.annotations.training_set import export_training_set
from napari_samlung.gui._common import PathEdit
from napari_samlung.gui._viewer import SlideContext, UserError
from napari_samlung.results.classmap import ClassMap

if TYPE_CHECKING:
    from napari_samlung.gui._widget import SamLungWidget

TRAINING_SET = "training-set"


class ExportPanel(QGroupBox):
    def __init__(self, host: SamLungWidget):
        super().__init__("Export")
        self.host = host
        self.training_set = PathEdit("folder", placeholder=f"<results>/{TRAINING_SET}")
        self.geojson = PathEdit("save", "GeoJSON (*.geojson)", "<results>/<slide>.geojson")
        self.label_tiff = PathEdit("save", "TIFF (*.tif *.tiff)", "<results>/<slide>-labels.tif")
        self.set_button = QPushButton("Training set")
        self.set_button.setToolTip("Image and label tiles of the reviewed regions, for 'Fine-tune'")
        self.set_button.clicked.connect(self.export_training_set)
        self.geojson_button = QPushButton("GeoJSON")
        self.geojson_button.setToolTip("Tumor outlines for QuPath (File > Import objects)")
        self.geojson_button.clicked.connect(self.export_geojson)
        self.tiff_button = QPushButton("Label TIFF")
        self.tiff_button.clicked.connect(self.export_label_tiff)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Training set", self.training_set)
        form.addRow("GeoJSON", self.geojson)
        form.addRow("Label TIFF", self.label_tiff)
        row = QHBoxLayout()
        for button in (self.set_button, self.geojson_button, self.tiff_button):
            row.addWidget(button)
        form.addRow("Export", row)
        form.addRow(self.status)

    def training_set_path(self, cm: ClassMap) -> Path:
        return _chosen(self.training_set, cm.root / TRAINING_SET)

    def export_training_set(self) -> None:
        with self.host.user_errors():
            slide, cm = self._source()
            if not cm.reviewed:
                raise UserError(f"{slide.name} has no reviewed regions yet: review and apply a region first")
            self._start("training set", partial(training_set_job, self.host.slide_for(slide)), cm,
                        self.training_set_path(cm))

    def export_geojson(self) -> None:
        with self.host.user_errors():
            slide, cm = self._source()
            self._start("GeoJSON", geojson_job, cm, _chosen(self.geojson, cm.root / f"{slide.name}.geojson"))

    def export_label_tiff(self) -> None:
        with self.host.user_errors():
            slide, cm = self._source()
            target = _chosen(self.label_tiff, cm.root / f"{slide.name}-labels.tif")
            self._start("label TIFF", label_tiff_job, cm, target)

    def _source(self) -> tuple[SlideContext, ClassMap]:
        slide = self.host.current_slide()
        return slide, self.host.classmap(slide)

    def _start(self, what: str, job: Callable, cm: ClassMap, target: Path) -> None:
        if not target.parent.is_dir():
            raise UserError(f"{what}: the folder {target.parent} does not exist")
        self.host.start_job(job, cm, target, description=f"Exporting the {what}",
                            on_done=partial(self._exported, what))

    def _exported(self, what: str, path: Path) -> None:
        self.status.setText(f"{what}: {path}")
        show_info(f"{what} written to {path}")


def _chosen(edit: PathEdit, default: Path) -> Path:
    """The path typed or picked, else ``default``."""
    return Path(edit.text()).expanduser() if edit.text() else default


def training_set_job(slide, cm: ClassMap, out: Path, cancel) -> Generator:
    """Worker: the reviewed regions as a training set (replacing an earlier export there)."""
    yield "Exporting the training set"
    return export_training_set(cm, slide, out, overwrite=True)


def geojson_job(cm: ClassMap, path: Path, cancel) -> Generator:
    yield "Tracing the outlines"
    classmap_to_geojson(cm, path, reviewed_boxes=True)
    return path


def label_tiff_job(cm: ClassMap, path: Path, cancel) -> Generator:
    yield "Writing the label TIFF"
    return classmap_to_label_tiff(cm, path)

