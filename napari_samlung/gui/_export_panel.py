"""The "Export" panel: reviewed regions to a training set, the class map to GeoJSON and label TIFF;
and the way back in, "Import annotations..." (QuPath GeoJSON or a label image as reviewed regions).

Empty paths mean the defaults inside the slide's result folder. Every export runs in a worker
and is written atomically by the annotations module. The status line says the outcome of the last
export or import (done: the file, or failed: why), never an earlier one's file; a new current slide
clears it and the GeoJSON and label TIFF paths, which name one slide's files.

An import into a slide without results makes them where a segmentation would (the results folder
chosen in the widget, else beside the slide), with a class map at the chosen checkpoint's
resolution (else the vit_b preset's), every pixel "not reviewed" until imported.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Generator, Iterator, Mapping

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton

from napari_samlung.annotations.geojson import export_geojson
from napari_samlung.annotations.importing import (
    Imported,
    Target,
    create_unreviewed,
    read_annotations,
    slide_record,
    write_imported,
)
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.annotations.training_set import export_training_set
from napari_samlung.gui._common import PathEdit, describe, measure_burden
from napari_samlung.gui._viewer import SlideContext, UserError, show_reviewed
from napari_samlung.gui.state import TRAINING_SET
from napari_samlung.processes import run_apart
from napari_samlung.inference.engine import SegmentationParams, plan_segmentation
from napari_samlung.inference.models import model_spec
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import choose_results

IMPORT_FILTER = ("Annotations (*.geojson *.json *.png *.tif *.tiff);;GeoJSON (*.geojson *.json);;"
                 "Label images (*.png *.tif *.tiff)")
DEFAULT_PRESET = "vit_b"  # the resolution of new results when no checkpoint is chosen

if TYPE_CHECKING:
    from napari_samlung.gui._panel import Host


class ExportPanel(QGroupBox):
    """Output paths (the training set's is shared through the widget's state) and export buttons."""

    FIELDS: ClassVar[Mapping[str, str]] = {"training_set": "Training set", "geojson": "GeoJSON",
                                           "label_tiff": "Label TIFF"}

    def __init__(self, host: Host):
        super().__init__("Export")
        self.host = host
        self.training_set = PathEdit("folder", placeholder=f"<results>/{TRAINING_SET}")
        self.training_set.bind(host.state, "training_set")
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
        self.import_button = QPushButton("Import annotations...")
        self.import_button.setToolTip("QuPath GeoJSON or a label image (PNG/TIFF mask, the label TIFF) into the "
                                      "slide's results as reviewed regions")
        self.import_button.clicked.connect(self.choose_import)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout(self)
        for param, edit in (("training_set", self.training_set), ("geojson", self.geojson),
                            ("label_tiff", self.label_tiff)):
            form.addRow(self.FIELDS[param], edit)
        row = QHBoxLayout()
        for button in (self.set_button, self.geojson_button, self.tiff_button):
            row.addWidget(button)
        form.addRow("Export", row)
        form.addRow("Import", self.import_button)
        form.addRow(self.status)

    def slide_changed(self) -> None:
        """A new current slide: the last export and the per-slide file paths were another slide's."""
        self._say("")
        for edit in (self.geojson, self.label_tiff):
            edit.set_text("")

    def export_training_set(self) -> None:
        self._export("training set", "training_set", self._training_set)

    def export_geojson(self) -> None:
        self._export("GeoJSON", "geojson", lambda slide, cm: (
            geojson_job, _chosen(self.geojson, cm.root / f"{slide.name}.geojson")))

    def export_label_tiff(self) -> None:
        self._export("label TIFF", "label_tiff", lambda slide, cm: (
            label_tiff_job, _chosen(self.label_tiff, cm.root / f"{slide.name}-labels.tif")))

    def _training_set(self, slide: SlideContext, cm: ClassMap) -> tuple[Callable, Path]:
        if not cm.reviewed:
            raise UserError(f"{slide.name} has no reviewed regions yet: review and apply a region first")
        job = partial(training_set_job, self.host.slide_for(slide))
        return job, self.host.state.training_set_for(cm.root)

    def _export(self, what: str, field: str,
                prepare: Callable[[SlideContext, ClassMap], tuple[Callable, Path]]) -> None:
        """Check what can be checked here, then write ``what`` (its path set in ``field``) in a worker."""
        with self.host.user_errors(on_error=self._failed):
            slide = self.host.current_slide()
            cm = self.host.classmap(slide)
            job, target = prepare(slide, cm)
            if not target.parent.is_dir():
                raise UserError(f"the folder {target.parent} does not exist", param=field)
            started = self.host.start_job(job, cm, target, description=f"Exporting the {what}",
                                          on_done=partial(self._exported, what), on_error=self._failed)
            if started is not None:
                self._say(f"exporting the {what} to {target}")

    def choose_import(self) -> None:
        """Ask for a GeoJSON file or a label image, then import it."""
        path, _ = QFileDialog.getOpenFileName(self, "Import annotations", "", IMPORT_FILTER)
        if path:
            self.import_file(Path(path))

    def import_file(self, path: Path) -> None:
        """Import ``path`` (GeoJSON by its extension, else a label image) into the current slide's
        results in a worker; nothing is written unless the whole file passes its checks."""
        with self.host.user_errors(on_error=self._failed):
            slide = self.host.current_slide()
            if not Path(path).is_file():
                raise UserError(f"{path}: no such file")
            root, notice = choose_results(slide.path, self.host.state.project_dir or None)
            if notice:
                show_warning(notice)
            checkpoint = self.host.state.checkpoint.strip() or None
            job = self.host.start_job(import_job, self.host.slide_for(slide), Path(path), root, checkpoint,
                                      description="Importing annotations", on_done=partial(self._imported, slide),
                                      on_error=self._failed)
            if job is not None:
                self._say(f"importing {Path(path).name}")

    def _imported(self, slide: SlideContext, outcome: tuple[ClassMap, str]) -> Iterator[None]:
        cm, message = outcome
        yield from self.host.show_results(slide, cm)
        yield
        show_reviewed(self.host.viewer, slide, cm)
        self._say(f"done: {message}")
        show_info(message)

    def _exported(self, what: str, path: Path) -> None:
        self._say(f"done: {what} written to {path}")
        show_info(f"{what} written to {path}")

    def _failed(self, error: Exception) -> None:
        self._say("failed: " + describe(error, self.host.field_label))

    def _say(self, text: str) -> None:
        self.status.setText(text)


def _chosen(edit: PathEdit, default: Path) -> Path:
    """The path typed or picked, else ``default``."""
    return Path(edit.text()).expanduser() if edit.text() else default


def training_set_job(slide, cm: ClassMap, out: Path, cancel) -> Generator:
    """Worker: the reviewed regions as a training set (replacing an earlier export there)."""
    yield "Exporting the training set"
    return export_training_set(cm, slide, out, overwrite=True)


def geojson_job(cm: ClassMap, path: Path, cancel) -> Generator:
    yield "Tracing the outlines"
    run_apart(export_geojson, cm.root, path, reviewed_boxes=True)
    return path


def label_tiff_job(cm: ClassMap, path: Path, cancel) -> Generator:
    yield "Writing the label TIFF"
    return classmap_to_label_tiff(cm, path)



def import_job(slide, path: Path, root: Path, checkpoint: str | None, cancel) -> Generator:
    """Worker: check ``path`` against the slide's results (or new ones, made only once the file
    passed), then write it; returns the class map and a line saying what was imported."""
    yield f"Checking {path.name}"
    if ClassMap.exists(root):
        cm = ClassMap.open(root, mode="r+")
        target = Target.of(cm, tuple(tuple(s) for s in slide.level_shapes))
        imported = read_annotations(path, target)
    else:
        target, model = _new_target(slide, checkpoint)
        imported = read_annotations(path, target)
        cm = create_unreviewed(root, target, model=model,
                               slide=slide_record(slide.path, slide.name, slide.format, slide.shape, slide.mpp))
    yield "Writing the labels"
    write_imported(cm, imported, what="napari-samlung (importing annotations)")
    yield "Measuring the tumour burden"
    measure_burden(cm.root, slide, cancel)
    return cm, _import_message(imported, target)


def _new_target(slide, checkpoint: str | None) -> tuple[Target, dict]:
    """The class map new results get: the checkpoint's resolution and classes (else the default preset's)."""
    spec = model_spec(checkpoint, None if checkpoint else DEFAULT_PRESET)
    plan = plan_segmentation(slide, spec, SegmentationParams())
    num_classes = spec.num_classes
    model = {"preset": spec.preset, "mpp": plan.target_mpp, "tile": plan.tile, "num_classes": num_classes}
    if checkpoint:
        model["checkpoint"] = str(Path(checkpoint).resolve())
    return Target.fresh(slide, plan.shape, plan.scale, num_classes), model


def _import_message(imported: Imported, target: Target) -> str:
    """What was imported, with the notes (repairs, assumed reviewed region) after it."""
    return "; ".join([f"imported {imported.message(target)}", *imported.notes])
