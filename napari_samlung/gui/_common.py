"""Pieces the panels share: a path picker, and long jobs in napari thread workers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Generator

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from napari_samlung.slide import SlideError

# Errors a person can fix (a bad file, setting or region): shown as one message, no traceback.
USER_ERRORS = (ValueError, OSError, SlideError)


class PathEdit(QWidget):
    """A path field with a browse button; ``changed`` fires when the text is final."""

    changed = Signal(str)

    def __init__(self, kind: str = "file", filter: str = "", placeholder: str = "",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.kind, self.filter = kind, filter  # kind: 'file', 'save' or 'folder'
        self.edit = QLineEdit(self)
        self.edit.setPlaceholderText(placeholder)
        self.edit.editingFinished.connect(lambda: self.changed.emit(self.text()))
        browse = QPushButton("…", self)
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        layout.addWidget(browse)

    def text(self) -> str:
        return self.edit.text().strip()

    def set_text(self, text: str) -> None:
        """Set the path (as a pick would) and announce it."""
        self.edit.setText(text)
        self.changed.emit(self.text())

    def _browse(self) -> None:
        if self.kind == "folder":
            path = QFileDialog.getExistingDirectory(self, directory=self.text())
        elif self.kind == "save":
            path, _ = QFileDialog.getSaveFileName(self, directory=self.text(), filter=self.filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, directory=self.text(), filter=self.filter)
        if path:
            self.set_text(path)


@dataclass
class Failed:
    """A job that stopped on a user error; ``message`` says what to change."""

    message: str


def user_message(exc: BaseException) -> str:
    """A user error as one line (its whitespace, newlines included, collapsed to single spaces)."""
    return " ".join(str(exc).split())


def _guarded(function: Callable[..., Generator], *args: Any) -> Generator[Any, None, Any]:
    try:
        return (yield from function(*args))
    except USER_ERRORS as exc:
        return Failed(user_message(exc))


class Job:
    """A generator function run in a napari thread worker, with a napari progress bar.

    Yielded objects with ``done``/``total`` move the bar; strings set its description. The
    generator gets ``cancel`` (a threading.Event) as its last argument. User errors come back as
    one :func:`show_error` message; anything else is a bug and napari reports it with its traceback.
    """

    def __init__(self, function: Callable[..., Generator], *args: Any, description: str,
                 on_yield: Callable[[Any], None] | None = None, on_done: Callable[[Any], None] | None = None,
                 on_end: Callable[[], None] | None = None):
        self.cancel_event = threading.Event()
        self.bar = progress(total=0, desc=description)
        self._on_yield, self._on_done, self._on_end = on_yield, on_done, on_end
        self.running = True
        self.worker = create_worker(_guarded, function, *args, self.cancel_event, _start_thread=False)
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def cancel(self) -> None:
        self.cancel_event.set()

    def _yielded(self, event: Any) -> None:
        if self._on_yield is not None:
            self._on_yield(event)
        # last: napari's progress bar processes Qt events while it redraws, so later signals of
        # this worker (even 'finished', which closes the bar) may be handled inside these calls
        if not self.running:
            return
        if isinstance(event, str):
            self.bar.set_description(event)
        elif hasattr(event, "done") and hasattr(event, "total"):
            if event.total and self.bar.total != event.total:
                self.bar.total = event.total
            if self.running and event.done > self.bar.n:
                self.bar.update(event.done - self.bar.n)

    def _returned(self, result: Any) -> None:
        if isinstance(result, Failed):
            show_error(result.message)
        elif self._on_done is not None:
            self._on_done(result)

    def _finished(self) -> None:
        self.running = False
        self.bar.close()
        if self._on_end is not None:
            self._on_end()
