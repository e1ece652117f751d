"""Files appear whole or not at all, with the permissions any file of the user gets."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from classmap_factory import make_classmap
from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.files import atomic_file, write_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_results_are_readable_by_colleagues_under_the_usual_umask(tmp_path, umask_022):
    """Temporary files are private (0600); renamed into place they used to stay so."""
    cm = make_classmap(tmp_path / "case.samlung", np.ones((300, 300), np.uint8))
    chunk = cm.chunk_path(0, 0, 0)
    assert mode(chunk) == 0o644
    classmap_to_geojson(cm, tmp_path / "case.geojson")
    assert mode(tmp_path / "case.geojson") == 0o644
    write_atomic(tmp_path / "x.bin", b"1")
    assert mode(tmp_path / "x.bin") == 0o644


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    (tmp_path / "kept.txt").write_text("before")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "kept.txt", "w") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert (tmp_path / "kept.txt").read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
