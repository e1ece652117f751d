"""The widget's remembered choices: a small JSON file in the user's config folder.

``SAMLUNG_CONFIG_DIR`` overrides the folder (tests point it at a temporary one, so they never
touch a person's real settings). A missing or damaged file gives the defaults; values of the
wrong type are dropped one by one. Saving is atomic (:func:`napari_samlung.files.write_json_atomic`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from napari_samlung.files import write_json_atomic

ENV_VAR = "SAMLUNG_CONFIG_DIR"
FILE_NAME = "settings.json"


@dataclass
class WidgetSettings:
    """What the dock widget remembers between napari sessions."""

    checkpoint: str = ""  # SAM-Lung checkpoint
    sam_weights: str = ""  # official SAM ViT-B weights (empty: the checkpoint is self-contained)
    device: str = "auto"
    project_dir: str = ""  # empty: results live next to each slide


def settings_path() -> Path:
    """``$SAMLUNG_CONFIG_DIR/settings.json``, else the platform's user config folder."""
    folder = os.environ.get(ENV_VAR)
    if not folder:
        from platformdirs import user_config_dir

        folder = user_config_dir("napari-samlung", appauthor=False)
    return Path(folder) / FILE_NAME


def load_settings(path: Path | None = None) -> WidgetSettings:
    """The saved settings, with defaults for whatever is missing or unreadable."""
    path = path or settings_path()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return WidgetSettings()
    if not isinstance(saved, dict):
        return WidgetSettings()
    defaults = WidgetSettings()
    values = {f.name: saved[f.name] for f in dataclasses.fields(WidgetSettings)
              if isinstance(saved.get(f.name), type(getattr(defaults, f.name)))}
    return WidgetSettings(**values)


def save_settings(settings: WidgetSettings, path: Path | None = None) -> None:
    """Write ``settings`` atomically, creating the folder when needed."""
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dataclasses.asdict(settings), indent=1)
