"""One writer per results folder: a second one is refused naming the first; a killed one frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from classmap_factory import make_classmap
from napari_samlung.results.drafts import start_review
from napari_samlung.results.lock import Busy, writing

HOLD = """
import sys, time
from napari_samlung.results.lock import writing
with writing(sys.argv[1], "samlung segment"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the folder's lock, like a running `samlung segment`."""
    root = tmp_path / "case.samlung"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield root, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_first(holder):
    root, proc = holder
    with pytest.raises(Busy, match=f"samlung segment \\(pid {proc.pid}"):
        with writing(root, "samlung export"):
            pass


def test_a_review_is_not_applied_while_another_process_writes(tmp_path):
    cm = make_classmap(tmp_path / "case.samlung", np.zeros((64, 64), np.uint8))
    draft = start_review(cm, (0, 0, 32, 32))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(cm.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Busy):
            draft.apply()
        assert not cm.reviewed  # nothing recorded, the draft is still there to apply later
    finally:
        proc.kill()
        proc.wait()
    assert draft.apply()["box"] == [0, 0, 32, 32]


def test_a_killed_writer_leaves_the_folder_free(holder):
    root, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with writing(root, "samlung segment"):
        assert (root / ".lock").read_text().startswith("samlung segment")


def test_a_writer_may_wait_for_the_first_to_finish(holder):
    root, proc = holder
    start = time.monotonic()
    with pytest.raises(Busy):
        with writing(root, "second", wait_s=0.3):
            pass
    assert time.monotonic() - start >= 0.3
