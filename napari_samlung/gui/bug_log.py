"""Unexpected errors (bugs) met by the widget, with their tracebacks, in a log file the user can open.

The widget shows an error the user can fix as one line; anything else is a bug, which napari
shows with its traceback and this log keeps after napari has closed, for a bug report.
``SAMLUNG_LOG_DIR`` overrides the folder (tests point it at a temporary one), as
``SAMLUNG_CONFIG_DIR`` does for the settings. No Qt, no napari.
"""

from __future__ import annotations

import os
import traceback
from datetime import datetime
from pathlib import Path

ENV_VAR = "SAMLUNG_LOG_DIR"
FILE_NAME = "widget.log"


def log_path() -> Path:
    """``$SAMLUNG_LOG_DIR/widget.log``, else in the platform's user log folder."""
    folder = os.environ.get(ENV_VAR)
    if not folder:
        from platformdirs import user_log_dir

        folder = user_log_dir("napari-samlung", appauthor=False)
    return Path(folder) / FILE_NAME


def log_bug(exc: BaseException) -> Path:
    """Append ``exc`` with its traceback and the time to the log; returns the log's path."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        log.write(f"--- {datetime.now().isoformat(timespec='seconds')}\n")
        log.write("".join(traceback.format_exception(exc)))
    return path
