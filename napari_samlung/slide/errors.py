"""The one error type for slides that cannot be opened or read."""

from __future__ import annotations

from pathlib import Path

from napari_samlung.errors import SamLungError


class SlideError(SamLungError):
    """A slide file is missing, unreadable, truncated or of an unsupported kind.

    The message always names the file, so a command line can print it as it is.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
