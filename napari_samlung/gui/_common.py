"""Pieces the panels share: a path picker bound to the widget's state, error reports, long jobs in
napari thread workers, and imports warmed off the main thread."""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generator, Iterator

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import ErrorNotification, notification_manager, show_error
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from napari_samlung.errors import SamLungError, user_error
from napari_samlung.gui.bug_log import log_bug
from napari_samlung.gui.state import WidgetState
from napari_samlung.results import burden

# napari imports these on the main thread when it makes the first labels or shapes layer (pandas for
# the layer's features: 0.4-1.6 s, the viewer frozen when a run's first labels appear)
WARM_IMPORTS = ("pandas",)


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

    def show_text(self, text: str) -> None:
        """Show ``text``, a change made elsewhere, without announcing it."""
        if text != self.text():
            self.edit.setText(text)

    def bind(self, state: WidgetState, name: str) -> None:
        """Keep this field and ``state.<name>`` equal, whichever of the two changes."""
        self.edit.setText(getattr(state, name))
        self.changed.connect(partial(setattr, state, name))
        getattr(state.events, name).connect(self.show_text)

    def _browse(self) -> None:
        if self.kind == "folder":
            path = QFileDialog.getExistingDirectory(self, directory=self.text())
        elif self.kind == "save":
            path, _ = QFileDialog.getSaveFileName(self, directory=self.text(), filter=self.filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, directory=self.text(), filter=self.filter)
        if path:
            self.set_text(path)


def plain_name(param: str) -> str:
    """An engine parameter by its own name (where no field of the widget sets it)."""
    return param


def describe(exc: BaseException, label: Callable[[str], str] = plain_name) -> str:
    """``exc`` in one line for a status: a user error in the widget's words, a bug by its type."""
    error = user_error(exc)
    if error is not None:
        return " ".join(error.worded(label).split())
    return f"unexpected error: {type(exc).__name__}: {exc}"


def report(exc: BaseException, label: Callable[[str], str] = plain_name) -> None:
    """Show an error raised by a button's action or a job.

    A user error (:func:`napari_samlung.errors.user_error`) is one line, naming parameters by
    ``label(param)`` (the widget's field labels). Anything else is a bug: napari's error notification
    keeps its traceback, the log (:mod:`~napari_samlung.gui.bug_log`) keeps it too, and the
    notification says where that log is.
    """
    if user_error(exc) is not None:
        show_error(describe(exc, label))  # one line: newlines collapsed
        return
    try:
        where = f"details in {log_bug(exc)}"
    except OSError as log_error:
        where = f"the log could not be written: {log_error}"
    notification = ErrorNotification(exc)
    notification.message = f"unexpected error: {type(exc).__name__}: {exc} ({where})"
    notification_manager.dispatch(notification)


@dataclass
class Failed:
    """A job that stopped on an exception; the main thread reports it (:func:`report`)."""

    error: Exception


def _guarded(function: Callable[..., Generator], *args: Any) -> Generator[Any, None, Any]:
    try:
        return (yield from function(*args))
    except Exception as exc:  # user error or bug alike: reported on the main thread, traceback kept
        return Failed(exc)


class Job:
    """A generator function run in a napari thread worker, with a napari progress bar.

    Yielded objects with ``done``/``total`` move the bar; strings set its description. The
    generator gets ``cancel`` (a threading.Event) as its last argument. An exception ends the job
    without ``on_done`` and is reported by :func:`report` (``label`` words a user error's parameter):
    a user error as one message, a bug with its traceback, logged; ``on_error`` then gets it (a
    panel's status says the job failed).

    ``on_done`` may be a generator function: the job then runs it on the main thread one step (up
    to each ``yield``) per turn of the event loop, so that the viewer draws and answers between the
    steps of showing a result (each layer change can take napari tens of milliseconds), and ends
    after its last step.
    """

    def __init__(self, function: Callable[..., Generator], *args: Any, description: str,
                 on_yield: Callable[[Any], None] | None = None, on_done: Callable[[Any], None] | None = None,
                 on_end: Callable[[], None] | None = None, label: Callable[[str], str] = plain_name,
                 on_error: Callable[[Exception], None] | None = None):
        self.cancel_event = threading.Event()
        self.bar = progress(total=0, desc=description)
        self._on_yield, self._on_done, self._on_end, self._on_error = on_yield, on_done, on_end, on_error
        self._label = label
        self._steps: Iterator[None] | None = None
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
            report(result.error, self._label)
            if self._on_error is not None:
                self._on_error(result.error)
        elif self._on_done is not None:
            steps = self._on_done(result)
            if isinstance(steps, Iterator):
                self._steps = steps

    def _finished(self) -> None:
        if self._steps is not None:
            QTimer.singleShot(0, self._next_step)
            return
        self.running = False
        self.bar.close()
        if self._on_end is not None:
            self._on_end()

    def _next_step(self) -> None:
        try:
            next(self._steps)
        except StopIteration:
            self._steps = None
        except Exception as exc:  # showing the result failed; the work itself is done
            self._steps = None
            report(exc, self._label)
            if self._on_error is not None:
                self._on_error(exc)
        else:
            QTimer.singleShot(0, self._next_step)
            return
        self._finished()


def warm_imports(names: tuple[str, ...] = WARM_IMPORTS) -> threading.Thread:
    """Import ``names`` in a background thread now, so that napari finds them loaded when it needs
    them on the main thread instead of freezing the viewer while it imports them."""
    def load() -> None:
        for name in names:
            importlib.import_module(name)

    thread = threading.Thread(target=load, name="samlung-warm-imports", daemon=True)
    thread.start()
    return thread


class _Stopped(Exception):
    """Measuring the tumour burden was cancelled."""


def measure_burden(root, slide=None, cancel: threading.Event | None = None) -> None:
    """Worker side: measure the tumour burden again after the labels changed (stored figures that
    still hold are kept). Cancel, another writer or a damaged chunk leave the figures marked out of
    date, which the Segment panel says; the change itself stands either way."""
    def check(done: int, total: int) -> None:
        if cancel is not None and cancel.is_set():
            raise _Stopped

    try:
        burden.current(root, slide, progress=check)
    except (_Stopped, SamLungError):
        pass
