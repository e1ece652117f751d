"""Results go where the user can find and write them; a bad chosen folder fails before any work."""

from __future__ import annotations

import os

import numpy as np
import pytest

from classmap_factory import make_classmap
from napari_samlung.errors import FileAccessError
from napari_samlung.results import folders
from napari_samlung.results.folders import check_results_folder, choose_results, find_results, results_dir


@pytest.fixture
def slide(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))
    (tmp_path / "share").mkdir()
    path = tmp_path / "share" / "case.svs"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("make, problem", [
    (lambda p: None, "no such folder"),
    (lambda p: p.write_text("x"), "not a folder"),
])
def test_a_chosen_results_folder_must_exist(tmp_path, slide, make, problem):
    chosen = tmp_path / "results"
    make(chosen)
    with pytest.raises(FileAccessError, match=problem) as refused:
        choose_results(slide, chosen)
    assert refused.value.param == "results_folder"


def test_a_read_only_chosen_folder_is_refused_not_replaced(tmp_path, slide, monkeypatch):
    """It used to fall back silently to the slide's folder when results were already there."""
    make_classmap(results_dir(slide), np.zeros((8, 8), np.uint8))
    chosen = tmp_path / "results"
    chosen.mkdir()
    monkeypatch.setattr(folders, "writable", lambda folder: folder != chosen)
    with pytest.raises(FileAccessError, match="not writable"):
        choose_results(slide, chosen)


@pytest.mark.skipif(os.geteuid() == 0, reason="a superuser can write into any folder, so no folder is read-only")
def test_a_folder_without_write_permission_is_not_writable(tmp_path):
    tmp_path.joinpath("ro").mkdir(mode=0o555)
    with pytest.raises(FileAccessError, match="not writable"):
        check_results_folder(tmp_path / "ro")


def test_a_read_only_slide_folder_falls_back_to_the_user_folder_with_a_notice(slide, monkeypatch):
    monkeypatch.setattr(folders, "writable", lambda folder: folder != slide.parent)
    root, notice = choose_results(slide)
    assert root.name == "case.samlung" and str(root).startswith(os.environ["XDG_DATA_HOME"])
    assert "not writable" in notice and str(root) in notice
    make_classmap(root, np.zeros((8, 8), np.uint8))
    assert find_results(slide) == root  # found again when the slide is opened later
    assert choose_results(slide) == (root, None)


def test_results_beside_a_writable_slide_folder_need_no_notice(slide):
    assert choose_results(slide) == (results_dir(slide), None)
    assert folders.writable(slide.parent) and not folders.writable(slide.parent / "missing")


def test_two_slides_of_one_name_in_different_read_only_folders_do_not_meet(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))
    a, b = tmp_path / "a" / "case.svs", tmp_path / "b" / "case.svs"
    assert folders.user_results_dir(a) != folders.user_results_dir(b)


def test_results_beside_the_slide_are_used_with_a_notice_naming_both_folders_when_another_is_chosen(tmp_path, slide):
    beside = make_classmap(results_dir(slide), np.zeros((8, 8), np.uint8)).root
    chosen = tmp_path / "results"
    chosen.mkdir()
    root, notice = choose_results(slide, chosen)
    assert root == beside and str(beside) in notice and str(chosen) in notice
    assert choose_results(slide) == (beside, None)  # nothing chosen: nothing to say


@pytest.mark.parametrize("name, stem", [("x.ome.zarr", "x"), ("x.OME.TIFF", "x"), ("case.v2.ome.tif", "case.v2"),
                                        ("x.svs", "x"), ("dicom-folder", "dicom-folder")])
def test_results_are_named_after_the_slide_without_its_format_suffixes(tmp_path, name, stem):
    assert results_dir(tmp_path / name) == tmp_path / f"{stem}.samlung"
