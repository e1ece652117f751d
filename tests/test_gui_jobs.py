"""Long work in napari thread workers: callback order, user errors, cancel."""

from __future__ import annotations

import threading
import time

import pytest
from qtpy.QtWidgets import QApplication

from gui_support import isolated_config, notifications  # noqa: F401  (fixtures)
from napari_samlung.gui._common import Job

pytestmark = pytest.mark.gui


class Step:
    def __init__(self, done: int, total: int):
        self.done, self.total = done, total


def test_progress_bar_redraws_cannot_reorder_a_jobs_callbacks(qtbot):
    redrawing = threading.Event()

    def work(cancel):
        yield Step(1, 5)
        redrawing.wait(10)  # the rest arrives while the main thread redraws the bar for step 1
        for i in range(2, 6):
            yield Step(i, 5)
        return "result"

    seen = []
    job = Job(work, description="test", on_yield=lambda e: seen.append(e.done), on_done=seen.append)
    update = job.bar.update

    def update_like_a_shown_bar(n=1):  # napari's bar processes Qt events when it redraws
        update(n)
        if not redrawing.is_set():
            redrawing.set()
            time.sleep(0.3)
        QApplication.processEvents()

    job.bar.update = update_like_a_shown_bar
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert seen == [1, 2, 3, 4, 5, "result"]
    assert job.bar.n == 5


def test_a_user_error_becomes_one_message_and_no_result(qtbot):
    def work(cancel):
        yield "reading"
        raise ValueError("slide.svs: truncated\n  file")

    done, ended = [], []
    job = Job(work, description="test", on_done=done.append, on_end=lambda: ended.append(True))
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert notifications("error") == ["slide.svs: truncated file"]
    assert done == [] and ended == [True]


def test_cancel_reaches_the_generator(qtbot):
    def work(cancel):
        while not cancel.wait(0.01):
            yield "working"
        return "stopped"

    done = []
    job = Job(work, description="test", on_done=done.append)
    qtbot.wait(50)
    job.cancel()
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert done == ["stopped"]
