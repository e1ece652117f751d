"""The "Fine-tune on corrections" panel: export the reviewed regions, run ``samlung-finetune`` on
them from the current checkpoint in a separate process, follow it, and offer the new checkpoint.

The summary line is the panel's status: the run's progress while it runs, then its outcome (done:
the checkpoint, failed: why, cancelled), never "starting" after a failure. A new current slide
clears it unless a run is going on; the log and the new checkpoint stay (they are the model's).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping

from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
)

from napari_samlung.annotations.training_set import export_training_set
from napari_samlung.data import read_export_set
from napari_samlung.training_runs.launcher import (
    FinetuneConfig,
    FinetuneProgress,
    FinetuneResult,
    run_finetune,
)
from napari_samlung.gui._common import Job, describe
from napari_samlung.gui._viewer import UserError
from napari_samlung.gui.model_cache import check_model_files
from napari_samlung.inference.predictor import resolve_device

if TYPE_CHECKING:
    from napari_samlung.gui._panel import Host

LOG_LINES = 2000
#: The "What trains" choices: label -> samlung-finetune's --tune (None: the program's default).
TUNE_CHOICES: Mapping[str, str | None] = {"Default": None, "Mona adapters": "mona", "Whole network": "full",
                                          "Head only": "head"}
TUNE_TIP = ("Default: Mona adapters and head on the official SAM encoder, the whole network where the encoder "
            "has no pretrained weights (or was trained whole before).\n"
            "Mona adapters: the adapters and the head train (the paper's method; small checkpoints).\n"
            "Whole network: every weight trains (slower; the checkpoint carries the encoder).\n"
            "Head only: the head alone trains (fastest).")


class FinetunePanel(QGroupBox):
    """Training settings, the run's log, and the new checkpoint (offered through the widget's state)."""

    FIELDS: ClassVar[Mapping[str, str]] = {"tune": "What trains", "epochs": "Epochs",
                                           "max_steps_per_epoch": "Steps per epoch", "batch_size": "Batch size",
                                           "nproc": "Processes"}

    def __init__(self, host: Host):
        super().__init__("Fine-tune on corrections")
        self.host = host
        self.job: Job | None = None
        self.new_checkpoint: Path | None = None
        self.tune = QComboBox()
        self.tune.addItems(list(TUNE_CHOICES))
        self.tune.setToolTip(TUNE_TIP)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(5)
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 1_000_000)
        self.max_steps.setSpecialValueText("all")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 256)
        self.batch_size.setValue(2)
        self.processes = QSpinBox()
        self.processes.setRange(1, 64)
        self.processes.setToolTip("processes (one per GPU); more than one runs under torchrun")
        self.run_button = QPushButton("Fine-tune on corrections")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button = QPushButton("Use the new checkpoint")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self.use_new_checkpoint)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setMinimumHeight(80)
        form = QFormLayout(self)
        for param, box in (("tune", self.tune), ("epochs", self.epochs), ("max_steps_per_epoch", self.max_steps),
                           ("batch_size", self.batch_size), ("nproc", self.processes)):
            form.addRow(self.FIELDS[param], box)
        row = QHBoxLayout()
        for button in (self.run_button, self.cancel_button):
            row.addWidget(button)
        form.addRow(row)
        form.addRow(self.summary)
        form.addRow(self.log)
        form.addRow(self.use_button)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def slide_changed(self) -> None:
        """A new current slide: the last run's outcome was another slide's (a run going on keeps its
        progress line)."""
        if not self.running:
            self.summary.setText("")

    def start(self) -> None:
        host, state = self.host, self.host.state
        if self.running:  # the summary shows that run's progress: it stays
            show_warning("fine-tuning is already running: wait for it or press Cancel")
            return
        with host.user_errors(on_error=self._failed):
            checkpoint, sam_weights = check_model_files(state.checkpoint, state.sam_weights)
            slide = host.current_slide()
            cm = host.classmap(slide)
            if not cm.reviewed:
                raise UserError(f"{slide.name} has no reviewed regions to learn from: "
                                "review and apply a region first")
            device = state.device
            config = FinetuneConfig(
                data_paths=[state.training_set_for(cm.root)], init_checkpoint=checkpoint,
                output_dir=cm.root / "finetune" / time.strftime("%Y%m%d-%H%M%S"), sam_weights=sam_weights,
                epochs=self.epochs.value(), max_steps_per_epoch=self.max_steps.value() or None,
                batch_size=self.batch_size.value(), device=device, nproc=self.processes.value(),
                workers=0 if resolve_device(device).type == "cpu" else 4, tune=TUNE_CHOICES[self.tune.currentText()])
            self.log.clear()
            self.summary.setText("exporting the reviewed regions")
            self.use_button.setEnabled(False)
            self.job = Job(self._run, host.slide_for(slide), cm, config, description="Fine-tuning SAM-Lung",
                           on_yield=self._progress, on_done=self._done, label=host.field_label,
                           on_error=self._failed)

    @staticmethod
    def _run(slide, cm, config: FinetuneConfig, cancel):
        """Worker: export the reviewed regions afresh, then run and follow samlung-finetune."""
        yield "Exporting the reviewed regions"
        data = export_training_set(cm, slide, config.data_paths[0], overwrite=True)
        if len(read_export_set(data).pairs) < 2:
            raise UserError("fine-tuning needs at least two exported tiles (one is held out for validation): "
                            "review a larger region or more regions")
        yield "Running samlung-finetune"
        return (yield from run_finetune(config, cancel))

    def _progress(self, event) -> None:
        if isinstance(event, str):
            self.summary.setText(event)
        elif isinstance(event, FinetuneProgress):
            for line in event.log:
                self.log.appendPlainText(line)
            self.summary.setText(event.summary())

    def _done(self, result: FinetuneResult) -> None:
        if result.cancelled:
            self.summary.setText(f"cancelled: no new checkpoint (the run's folder: {result.output_dir})")
            show_warning("fine-tuning cancelled")
            return
        self.new_checkpoint = result.checkpoint
        self.use_button.setEnabled(True)
        self.summary.setText(f"done: {result.checkpoint}")
        show_info(f"fine-tuning finished: {result.checkpoint} ('Use the new checkpoint' to segment with it)")

    def _failed(self, error: Exception) -> None:
        self.summary.setText("failed: " + describe(error, self.host.field_label))

    def use_new_checkpoint(self) -> None:
        if self.new_checkpoint is not None:
            self.host.state.checkpoint = str(self.new_checkpoint)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
