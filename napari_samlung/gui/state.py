"""What the panels of one dock widget share: model files, device, results and training-set folders.

The widget owns one :class:`WidgetState` (per viewer; never a module global). A panel reads and
writes these fields, never another panel's controls; a panel that shows a field follows
``state.events.<field>`` (a psygnal evented dataclass), so what one panel changes shows in the
others. No Qt, no napari.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from psygnal import evented

from napari_samlung.gui.settings import WidgetSettings

TRAINING_SET = "training-set"  # the training set's folder inside a result folder, by default


@evented
@dataclass
class WidgetState(WidgetSettings):
    """The remembered settings (checkpoint, SAM weights, device, results folder) and this session's
    training-set folder."""

    training_set: str = ""  # chosen in Export; empty: <results>/training-set

    @classmethod
    def from_settings(cls, settings: WidgetSettings) -> WidgetState:
        return cls(**dataclasses.asdict(settings))

    def settings(self) -> WidgetSettings:
        """The fields remembered between napari sessions."""
        return WidgetSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(WidgetSettings)})

    def training_set_for(self, results: Path) -> Path:
        """Where the training set of the result folder ``results`` is exported (and fine-tuned from)."""
        return Path(self.training_set).expanduser() if self.training_set else results / TRAINING_SET
