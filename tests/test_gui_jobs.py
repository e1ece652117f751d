"""Long work in napari thread workers: callback order, user errors, bugs, cancel."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QApplication

from gui_support import isolated_config, notifications  # noqa: F401  (fixtures)
from napari_samlung.gui._common import Job
from napari_samlung.gui.bug_log import log_path
from napari_samlung.inference.engine import SegmentationError
from napari_samlung.slide import SlideError

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
        raise SlideError("slide.svs", "truncated\n  file")

    done, ended = [], []
    job = Job(work, description="test", on_done=done.append, on_end=lambda: ended.append(True))
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert notifications("error") == ["slide.svs: truncated file"]
    assert done == [] and ended == [True]


def test_a_user_error_names_the_widgets_field(qtbot):
    def work(cancel):
        yield "planning"
        raise SegmentationError("must be a multiple of 16, got 100", param="tile_size")

    job = Job(work, description="test", label={"tile_size": "Tile size"}.__getitem__)
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert notifications("error") == ["Tile size: must be a multiple of 16, got 100"]
    assert not log_path().exists()


def _divide(cancel):
    yield "dividing"
    return 1 / 0


def _reshape(cancel):
    yield "reshaping"
    return np.zeros(3).reshape(2, 2)  # numpy's ValueError is a bug, not a user error


@pytest.mark.parametrize("work, kind", [(_divide, ZeroDivisionError), (_reshape, ValueError)])
def test_a_bug_keeps_its_traceback_and_is_logged(qtbot, isolated_config, work, kind):
    done, ended = [], []
    job = Job(work, description="test", on_done=done.append, on_end=lambda: ended.append(True))
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    (notice,) = [n for n in notification_manager.records if str(n.severity) == "error"]
    assert type(notice.exception) is kind and notice.exception.__traceback__ is not None  # napari shows it
    log = log_path()
    assert log.parent == isolated_config.parent.parent / "logs"
    assert notice.message.startswith(f"unexpected error: {kind.__name__}: ") and f"details in {log}" in notice.message
    text = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and f"in {work.__name__}" in text and kind.__name__ in text
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


def test_a_result_shown_in_steps_lets_the_event_loop_run_between_them_and_ends_the_job_after(qtbot):
    from qtpy.QtCore import QTimer

    def work(cancel):
        yield "working"
        return "result"

    seen, ended = [], []

    def show(result):
        seen.append(result)
        QTimer.singleShot(0, lambda: seen.append("event loop"))  # runs before the next step does
        yield
        seen.append("step 2")
        yield
        seen.append("step 3")

    job = Job(work, description="test", on_done=show, on_end=lambda: ended.append(list(seen)))
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert seen == ["result", "event loop", "step 2", "step 3"]
    assert ended == [seen]  # the job ended after its last step


def test_a_failing_step_is_reported_and_still_ends_the_job(qtbot):
    def work(cancel):
        yield "working"
        return "result"

    def show(result):
        yield
        raise SlideError("slide.svs", "gone while shown")

    failed, ended = [], []
    job = Job(work, description="test", on_done=show, on_error=failed.append, on_end=lambda: ended.append(True))
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert ended == [True] and len(failed) == 1
    assert any("gone while shown" in m for m in notifications("error"))
