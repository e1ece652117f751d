"""Where a slide's results live: ``<stem>.samlung/`` in a chosen folder, beside the slide, or
(when the slide's folder is read-only, as on a hospital's slide share) in a per-user folder."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import platformdirs

from napari_samlung.errors import FileAccessError
from napari_samlung.results.classmap import ClassMap

SUFFIX = ".samlung"
DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")  # one format each: both parts leave the name


def results_dir(slide_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Where a slide's results live: ``OUT/<stem>.samlung`` or next to the slide."""
    slide_path = Path(slide_path)
    double = next((s for s in DOUBLE_SUFFIXES if slide_path.name.lower().endswith(s)), None)
    name = slide_path.name[:-len(double)] if double else slide_path.stem
    parent = Path(out_dir) if out_dir is not None else slide_path.parent
    return parent / f"{name}{SUFFIX}"


def slide_stem(root: str | os.PathLike) -> str:
    """The slide's name that a result folder carries (``case.samlung`` -> ``case``)."""
    return Path(root).name.removesuffix(SUFFIX)


def user_results_dir(slide_path: str | os.PathLike) -> Path:
    """The per-user home of a slide's results when its own folder cannot be written; one
    subfolder per slide folder, so two slides of one name in different folders do not meet."""
    folder = str(Path(slide_path).resolve().parent)
    key = hashlib.sha256(folder.encode()).hexdigest()[:12]
    return results_dir(slide_path, Path(platformdirs.user_data_dir("napari-samlung")) / "results" / key)


def writable(folder: Path) -> bool:
    """Whether a file can be made in ``folder``: tried, since permissions do not tell about
    read-only mounts (and a superuser passes every permission check)."""
    if not folder.is_dir():
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".samlung-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_results_folder(folder: str | os.PathLike) -> Path:
    """A results folder the user chose: it must exist and be writable (refused before any work)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileAccessError(f"{folder}: no such folder", param="results_folder")
    if not folder.is_dir():
        raise FileAccessError(f"{folder}: not a folder", param="results_folder")
    if not writable(folder):
        raise FileAccessError(f"{folder}: not writable", param="results_folder")
    return folder


def find_results(slide_path: str | os.PathLike, project_dir: str | os.PathLike | None = None) -> Path | None:
    """The result folder holding a class map for the slide: in ``project_dir`` first, then beside
    it, then in the per-user folder."""
    candidates = ([results_dir(slide_path, project_dir)] if project_dir else []) + [
        results_dir(slide_path), user_results_dir(slide_path)]
    return next((root for root in candidates if ClassMap.exists(root)), None)


def choose_results(slide_path: str | os.PathLike,
                   project_dir: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """Where a run on the slide writes, and a notice for the user when it is not where they would
    look. A chosen ``project_dir`` is checked first; then existing results are reused; new ones go
    into ``project_dir``, else beside the slide, else (read-only slide folder) the per-user folder.
    Raises :class:`FileAccessError` for a chosen folder that is missing or read-only."""
    if project_dir:
        check_results_folder(project_dir)
    found = find_results(slide_path, project_dir)
    if found is not None:
        if project_dir and found != results_dir(slide_path, project_dir):
            return found, (f"{Path(slide_path).name} already has results in {found}: they are used, not "
                           f"{project_dir} (move them there, or delete them to start afresh)")
        return found, None
    if project_dir:
        return results_dir(slide_path, project_dir), None
    beside = results_dir(slide_path)
    if writable(beside.parent):
        return beside, None
    fallback = user_results_dir(slide_path)
    fallback.parent.mkdir(parents=True, exist_ok=True)
    return fallback, (f"{beside.parent} is not writable; results of {Path(slide_path).name} go to {fallback}")
