"""The error of exports that cannot be written."""

from __future__ import annotations

from napari_samlung.errors import SamLungError


class ExportError(SamLungError):
    """An export that cannot be made: the one-line message names the file or folder and why."""
