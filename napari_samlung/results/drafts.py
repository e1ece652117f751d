"""Review drafts: a pathologist's correction of one class-map box, kept on disk until applied.

A draft is a zarr array ``<results>/drafts/<id>.zarr`` holding a copy of the class map inside its
box (class-map pixels). The widget shows it as an editable single-scale Labels layer, so napari
writes every brush stroke straight into the draft on disk. Why this never loses work:

- Before :meth:`Draft.apply` the class map is untouched; a crash or a closed window leaves the
  draft, and :func:`list_drafts` offers it again.
- :meth:`Draft.apply` writes the class map (pyramid included), then records the reviewed region
  (once, keyed by the draft id), then removes the draft. A crash at any step leaves the draft in
  place, and applying it again finishes the job with the same result.
- Drafts appear and disappear by ``os.replace`` of whole folders, so a half-made or half-deleted
  draft is never mistaken for a real one.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.lock import writing
from napari_samlung.labels import IGNORE

DRAFTS_DIR = "drafts"
DRAFT_ATTR = "samlung-draft"
DRAFT_CHUNK = 256


class ReviewError(SamLungError):
    """A draft that cannot be started, opened or applied (the message says which and why)."""


@dataclass
class Draft:
    """An editable copy of the class map inside ``box`` ((y, x, h, w), class-map pixels)."""

    classmap: ClassMap
    id: str
    box: Box
    created: str
    data: zarr.Array  # (h, w) uint8, writable; give it to napari as a Labels layer

    @property
    def path(self) -> Path:
        return drafts_dir(self.classmap) / f"{self.id}.zarr"

    def apply(self) -> dict[str, Any]:
        """Write the draft into the class map, record its box as reviewed, remove the draft.

        Returns the reviewed-region record. Safe to call again after a crash midway.
        """
        cm = self.classmap
        if cm.group.read_only:
            raise ReviewError(f"{cm.root}: the class map is open read-only; open it with mode='r+' to apply drafts")
        _check_fits(cm, self.path, dict(self.data.attrs[DRAFT_ATTR]))
        labels = np.asarray(self.data[...])
        bad = (labels > cm.num_classes) & (labels != IGNORE)
        if bad.any():
            values = sorted(int(v) for v in np.unique(labels[bad])[:5])
            raise ReviewError(f"{self.path}: label values {values} are not classes of this map "
                              f"(0..{cm.num_classes} or {IGNORE}); fix them before applying")
        with writing(cm.root, "a review being applied"):
            cm.refresh()
            record = next((r for r in cm.reviewed if r.get("draft") == self.id), None)
            if record is None:
                record = cm.add_reviewed(self.box, draft=self.id)
            cm.write(self.box, labels)
        self.discard()
        return record

    def discard(self) -> None:
        """Delete the draft (the class map keeps whatever it holds)."""
        _remove_folder(self.path)


MAX_REVIEW_SIDE = 8192  # class-map pixels: a review is of a field, not of a slide


def drafts_dir(classmap: ClassMap) -> Path:
    return classmap.root / DRAFTS_DIR


def start_review(classmap: ClassMap, box: Box) -> Draft:
    """Copy the class map inside ``box`` (class-map pixels, clipped to the map) into a new draft.

    A box wider or taller than :data:`MAX_REVIEW_SIDE` is refused: a person reviews a field, and
    applying a slide-sized draft would mark the whole slide as corrected.
    """
    y, x, h, w = (int(v) for v in box)
    if h <= 0 or w <= 0:
        raise ReviewError(f"box {tuple(box)} has no area (height and width must be positive)")
    try:
        box = classmap.clip((y, x, h, w))
    except ValueError as exc:
        raise ReviewError(str(exc)) from None
    if max(box[2:]) > MAX_REVIEW_SIDE:
        raise ReviewError(f"the region is {box[3]} x {box[2]} px at the model's resolution, more than "
                          f"{MAX_REVIEW_SIDE} x {MAX_REVIEW_SIDE}: zoom in, or draw a smaller rectangle to review")
    folder = drafts_dir(classmap)
    folder.mkdir(exist_ok=True)
    draft_id = uuid.uuid4().hex[:12]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")  # orders drafts
    info = {"id": draft_id, "box": [int(v) for v in box], "created": created,
            "classmap_shape": list(classmap.shape), "scale": classmap.scale}
    tmp = folder / f".tmp-{draft_id}.zarr"
    try:
        array = zarr.create_array(tmp, shape=box[2:], dtype="uint8", fill_value=0,
                                  chunks=(min(DRAFT_CHUNK, box[2]), min(DRAFT_CHUNK, box[3])),
                                  attributes={DRAFT_ATTR: info})
        array[...] = classmap.read(box)
        os.replace(tmp, folder / f"{draft_id}.zarr")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_draft(classmap, draft_id)


def open_draft(classmap: ClassMap, draft_id: str) -> Draft:
    """Open the draft ``draft_id`` of ``classmap`` for editing and applying."""
    path = drafts_dir(classmap) / f"{draft_id}.zarr"
    if not (path / "zarr.json").is_file():
        raise ReviewError(f"no draft {draft_id!r} in {path.parent}")
    try:
        data = zarr.open_array(path, mode="r+")
        info = dict(data.attrs[DRAFT_ATTR])
        box = tuple(int(v) for v in info["box"])
        created = str(info["created"])
    except Exception as exc:  # zarr raises several types for damaged stores
        raise ReviewError(f"{path} is not a readable draft: {exc}") from None
    if data.shape != box[2:]:
        raise ReviewError(f"{path}: array of shape {data.shape} does not match its box {box}")
    return Draft(classmap, draft_id, box, created, data)  # type: ignore[arg-type]


def list_drafts(classmap: ClassMap) -> list[Draft]:
    """Drafts not yet applied (left by closing napari or a crash), oldest first.

    Also removes leftovers of interrupted draft creation or removal (hidden folders), which
    never hold unsaved work.
    """
    folder = drafts_dir(classmap)
    if not folder.is_dir():
        return []
    drafts = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix == ".zarr":
            drafts.append(open_draft(classmap, path.stem))
    return sorted(drafts, key=lambda d: d.created)


def _check_fits(classmap: ClassMap, path: Path, info: dict[str, Any]) -> None:
    shape = tuple(info.get("classmap_shape", ()))
    if shape != tuple(classmap.shape) or not np.isclose(info.get("scale", 0.0), classmap.scale):
        raise ReviewError(f"{path} was made for a class map of shape {shape} at scale {info.get('scale')}, "
                          f"but {classmap.root} has shape {classmap.shape} at scale {classmap.scale}")


def _remove_folder(path: Path) -> None:
    """Remove a folder so that it is either fully there or gone under its name."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{uuid.uuid4().hex[:8]}-{path.name}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
