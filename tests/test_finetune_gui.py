"""The fine-tune panel's "What trains" choice: the default and every mode (that the choice reaches
samlung-finetune is pinned by test_gui_widget's fine-tune run)."""

from __future__ import annotations

import pytest

from gui_support import (  # noqa: F401  (fixtures)
    demo_slide,
    demo_source,
    isolated_config,
    ready_widget,
)
from napari_samlung.gui._finetune_panel import TUNE_CHOICES
from napari_samlung.training_runs.contract import TUNE_MODES

pytestmark = pytest.mark.gui


def test_the_panel_offers_the_default_and_every_tune_mode(make_napari_viewer, demo_slide, tiny_checkpoint):
    _, widget = ready_widget(make_napari_viewer(), demo_slide, tiny_checkpoint)
    box = widget.finetune.tune
    labels = [box.itemText(i) for i in range(box.count())]
    assert labels == ["Default", "Mona adapters", "Whole network", "Head only"]
    assert box.currentText() == "Default" and TUNE_CHOICES["Default"] is None
    assert sorted(TUNE_CHOICES[label] for label in labels[1:]) == sorted(TUNE_MODES)
