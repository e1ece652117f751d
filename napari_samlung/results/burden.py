"""Tumour burden of a slide: tumour area, tissue area, tumour fraction, tumour regions.

What a pathologist reports (tumour content before molecular testing), measured on the class map
as it is now, corrections included (an applied review writes its labels into the class map).

Definitions:

- *Measured* pixels: class-map pixels that a finished run or an applied review set (the whole map
  once a whole-slide run completed), except those labelled 255 (not reviewed). Pixels that were
  never segmented count nowhere.
- *Tumour*: measured pixels of class 1.
- *Tissue*: measured pixels that the slide's tissue detection (``slide/tissue.py``, without the
  safety margin the engine adds around tissue) finds, sampled at each class-map pixel's centre,
  plus every measured pixel of a class (tumour is tissue even where the coarse mask missed it).
  The mask is kept in the results folder (``tissue-mask.npz``), so figures can be refreshed
  without the slide; without either, tissue is unknown and so is the fraction.
- *Segmented fraction*: the share of the slide's detected tissue that is measured.
- *Regions*: 4-connected tumour components, the polygons of the exported GeoJSON, of at least a
  minimum area (default 0.01 mm^2). They are counted exactly on level 0, block by block (a
  class-map chunk): a component inside one block is counted there; components that reach a
  block's edge are joined across edges by union-find, so memory follows a block plus the ids
  along block edges, never the map. (Counting on a coarse level would merge close regions and
  miss thin ones.)

Figures are stored in the class map's metadata (key ``burden``) with the state of the map they
describe; :func:`stored` gives them only while that state holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from napari_samlung.errors import SamLungError
from napari_samlung.files import write_atomic
from napari_samlung.geometry import Box, intersect
from napari_samlung.labels import IGNORE, TUMOR, class_name
from napari_samlung.results.classmap import ClassMap, now
from napari_samlung.results.lock import writing
from napari_samlung.slide import TissueMask, TissueParams, open_slide

DEFAULT_MIN_REGION_UM2 = 10_000.0  # 0.01 mm^2
META_KEY = "burden"
TISSUE_FILE = "tissue-mask.npz"
#: The engine's tissue detection without its safety margin: areas, not tiles to skip.
TISSUE_PARAMS = TissueParams(margin=0)
UM2_PER_MM2 = 1e6
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)

Progress = Callable[[int, int], None]  # (blocks done, blocks in all)


@dataclass(frozen=True)
class Burden:
    """The figures of one class map. Pixel counts are class-map pixels of ``pixel_um`` microns."""

    pixel_um: float | None  # microns per class-map pixel; None: unknown, so no areas
    min_region_area_um2: float
    tumour_px: int
    measured_px: int
    tissue_px: int | None  # None: no tissue mask
    detected_tissue_px: int | None  # the tissue mask's pixels over the whole map
    measured_tissue_px: int | None  # of those, the measured ones
    regions: int | None  # tumour regions of at least the minimum area; None without microns
    class_px: dict[str, int] = field(default_factory=dict)  # measured pixels by class value
    class_names: dict[str, str] = field(default_factory=dict)
    basis: str = ""  # the state of the map measured (:func:`basis`)
    when: str = ""

    def _mm2(self, px: int | None) -> float | None:
        return None if px is None or self.pixel_um is None else px * self.pixel_um ** 2 / UM2_PER_MM2

    @property
    def tumour_mm2(self) -> float | None:
        return self._mm2(self.tumour_px)

    @property
    def tissue_mm2(self) -> float | None:
        return self._mm2(self.tissue_px)

    @property
    def tumour_fraction(self) -> float | None:
        """Tumour over tissue (0..1); None when tissue is unknown or empty."""
        return self.tumour_px / self.tissue_px if self.tissue_px else None

    @property
    def segmented_fraction(self) -> float | None:
        """Share of the slide's detected tissue that is measured (0..1)."""
        if self.detected_tissue_px is None or self.measured_tissue_px is None:
            return None
        return self.measured_tissue_px / self.detected_tissue_px if self.detected_tissue_px else 0.0

    @property
    def min_region_area_mm2(self) -> float:
        return self.min_region_area_um2 / UM2_PER_MM2

    def class_areas_mm2(self) -> dict[str, float | None]:
        """Measured area of each class, by class name."""
        return {self.class_names.get(v, v): self._mm2(n) for v, n in self.class_px.items()}

    def line(self) -> str:
        """The figures in one line: "Tumour 12.3 mm² of 85.0 mm² tissue (14 %), 7 regions ≥ 0.01 mm²"."""
        fraction = self.tumour_fraction
        percent = "" if fraction is None else f"{_percent(fraction)} %"
        if self.pixel_um is None:
            head = (f"Tumour {percent} of tissue" if percent else "Tumour fraction unknown (no tissue mask)")
            text = head + " (areas unknown: the slide's µm/px is not known)"
        elif self.tissue_px is None:
            text = f"Tumour {_area(self.tumour_mm2)} mm² (tissue unknown: no tissue mask, the slide could not be read)"
        else:
            text = f"Tumour {_area(self.tumour_mm2)} mm² of {_area(self.tissue_mm2)} mm² tissue" + (
                f" ({percent})" if percent else "")
        if self.regions is not None:
            plural = "s" if self.regions != 1 else ""
            text += f", {self.regions} region{plural} ≥ {_area(self.min_region_area_mm2)} mm²"
        segmented = self.segmented_fraction
        if segmented is not None and segmented < 0.995:
            text += f"; {_percent(segmented)} % of the tissue segmented"
        return text

    def to_meta(self) -> dict[str, Any]:
        """As stored in the class map's metadata: the areas for people and other tools, the pixel
        counts to rebuild this object."""
        return {
            "tumour_mm2": self.tumour_mm2, "tissue_mm2": self.tissue_mm2, "tumour_fraction": self.tumour_fraction,
            "tumour_regions": self.regions, "min_region_area_um2": self.min_region_area_um2,
            "segmented_fraction_of_tissue": self.segmented_fraction, "class_areas_mm2": self.class_areas_mm2(),
            "pixel_um": self.pixel_um,
            "pixels": {"tumour": self.tumour_px, "measured": self.measured_px, "tissue": self.tissue_px,
                       "detected_tissue": self.detected_tissue_px, "measured_tissue": self.measured_tissue_px,
                       "classes": dict(self.class_px)},
            "class_names": dict(self.class_names), "basis": self.basis, "measured": self.when,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Burden:
        px = meta["pixels"]
        return cls(meta["pixel_um"], float(meta["min_region_area_um2"]), int(px["tumour"]), int(px["measured"]),
                   px["tissue"], px["detected_tissue"], px["measured_tissue"], meta["tumour_regions"],
                   {str(k): int(v) for k, v in px.get("classes", {}).items()}, dict(meta.get("class_names", {})),
                   str(meta.get("basis", "")), str(meta.get("measured", "")))


def _percent(fraction: float) -> str:
    value = 100 * fraction
    return f"{value:.1f}" if 0 < value < 10 else f"{value:.0f}"


def _area(mm2: float | None) -> str:
    if mm2 is None:
        return "?"
    return f"{mm2:.1f}" if mm2 >= 10 else f"{mm2:.3g}"


# -- the state a burden describes ---------------------------------------------------------------------
def basis(cm: ClassMap) -> str:
    """A digest of what the figures depend on: runs, reviewed regions, resolution. Every run and
    every applied review changes it."""
    meta = cm.meta
    state = {k: meta.get(k) for k in ("status", "shape", "scale", "segmented", "job", "num_classes")}
    state["reviewed"] = [(r.get("id"), r.get("box")) for r in cm.reviewed]
    state["mpp"] = (meta.get("slide") or {}).get("mpp")
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored(cm: ClassMap, min_region_area_um2: float | None = None) -> Burden | None:
    """The figures in the metadata if they still describe the map (and, given, were counted with
    ``min_region_area_um2``); else None."""
    meta = cm.meta.get(META_KEY)
    if not isinstance(meta, dict) or meta.get("basis") != basis(cm):
        return None
    try:
        found = Burden.from_meta(meta)
    except (KeyError, TypeError, ValueError):
        return None
    if min_region_area_um2 is not None and not math.isclose(found.min_region_area_um2, min_region_area_um2):
        return None
    return found


# -- the tissue mask ----------------------------------------------------------------------------------
def tissue_for(cm: ClassMap, slide=None) -> tuple[TissueMask | None, bool]:
    """The tissue mask of the class map's slide and whether it must be saved: from ``slide`` (an
    opened :class:`~napari_samlung.slide.Slide`), else the one kept in the results folder, else from
    the slide file recorded at segmentation; (None, False) when none can be had."""
    slide_mpp = (cm.meta.get("slide") or {}).get("mpp")
    cached = _load_tissue(cm.root)
    if slide is not None:
        mask = slide.tissue(TISSUE_PARAMS)
        return mask, cached is None or not _same_mask(cached[0], mask) or cached[1] != slide.mpp
    if cached is not None and cached[1] == slide_mpp:
        return cached[0], False
    recorded = (cm.meta.get("slide") or {}).get("path")
    if recorded and Path(recorded).is_file():
        try:
            with open_slide(recorded, mpp=cm.user_mpp) as opened:
                return opened.tissue(TISSUE_PARAMS), True
        except SamLungError:
            pass  # moved, replaced or unreadable: the kept mask (if any) is the best there is
    return (cached[0] if cached is not None else None), False


def _same_mask(a: TissueMask, b: TissueMask) -> bool:
    return a.downsample == b.downsample and a.mask.shape == b.mask.shape and bool((a.mask == b.mask).all())


def _load_tissue(root: Path) -> tuple[TissueMask, float | None] | None:
    path = Path(root) / TISSUE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            shape = tuple(int(v) for v in data["shape"])
            mask = np.unpackbits(data["bits"], count=shape[0] * shape[1]).reshape(shape).astype(bool)
            mpp = float(data["slide_mpp"])
            return TissueMask(mask, float(data["downsample"])), (None if math.isnan(mpp) else mpp)
    except (OSError, KeyError, ValueError):
        return None  # damaged: made again from the slide when it can be read


def _save_tissue(root: Path, mask: TissueMask, slide_mpp: float | None) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, bits=np.packbits(mask.mask), shape=np.array(mask.mask.shape),
                        downsample=np.float64(mask.downsample),
                        slide_mpp=np.float64(np.nan if slide_mpp is None else slide_mpp))
    write_atomic(Path(root) / TISSUE_FILE, buffer.getvalue())


# -- measuring -------------------------------------------------------------------------------------------
def measure(cm: ClassMap, tissue: TissueMask | None, min_region_area_um2: float = DEFAULT_MIN_REGION_UM2, *,
            block: tuple[int, int] | None = None, progress: Progress | None = None) -> Burden:
    """The burden of ``cm`` with ``tissue`` (None: tissue unknown), streamed over level-0 blocks of
    ``block`` pixels (default: the class map's chunks)."""
    if not (math.isfinite(min_region_area_um2) and min_region_area_um2 >= 0):
        raise SamLungError(f"must be a finite area, zero or more, got {min_region_area_um2}", param="min_region_area")
    state = basis(cm)  # what the figures describe: the map as it is when measuring starts
    h, w = cm.shape
    bh, bw = block or cm.chunk
    pixel_um = cm.mpp
    covered = None if cm.status == "complete" else (
        [tuple(r["box"]) for r in cm.meta.get("segmented", [])] + cm.reviewed_boxes())
    regions = _Regions(w, math.ceil(min_region_area_um2 / pixel_um ** 2) if pixel_um else None)
    classes = np.zeros(256, np.int64)
    tissue_px = detected = measured_tissue = 0
    rows, cols = math.ceil(h / bh), math.ceil(w / bw)
    for by in range(rows):
        for bx in range(cols):
            box = (by * bh, bx * bw, min(bh, h - by * bh), min(bw, w - bx * bw))
            here = _tissue_in(tissue, box, cm.scale) if tissue is not None else None
            if here is not None:
                detected += int(here.sum())
            cover = _coverage(box, covered)
            if cover is None:
                regions.add(box, None)
            else:
                labels = cm.read(box)
                full = cover.all()  # the usual case: the whole block is segmented
                classes += np.bincount(labels.ravel() if full else labels[cover], minlength=256)
                regions.add(box, (labels == TUMOR) if full else (labels == TUMOR) & cover)
                if here is not None:
                    measured = labels != IGNORE if full else (labels != IGNORE) & cover
                    classified = (labels != 0) & (labels <= cm.num_classes)
                    tissue_px += int(np.count_nonzero(measured & (here | classified)))
                    measured_tissue += int(np.count_nonzero(measured & here))
            if progress is not None:
                progress(by * cols + bx + 1, rows * cols)
    values = range(1, cm.num_classes + 1)
    return Burden(
        pixel_um, float(min_region_area_um2), int(classes[TUMOR]), int(classes[:IGNORE].sum()),
        tissue_px if tissue is not None else None, detected if tissue is not None else None,
        measured_tissue if tissue is not None else None, regions.count(),
        {str(v): int(classes[v]) for v in values},
        {str(v): (cm.meta.get("class_names") or {}).get(str(v)) or class_name(v, cm.num_classes) for v in values},
        state, now())


def _coverage(box: Box, covered: list[Box] | None) -> np.ndarray | None:
    """Which pixels of ``box`` a run or review set (all when ``covered`` is None); None for none."""
    if covered is None:
        return np.ones(box[2:], bool)
    mask = np.zeros(box[2:], bool)
    for part in (intersect(box, c) for c in covered):
        if part is not None:
            mask[part[0] - box[0]:part[0] - box[0] + part[2], part[1] - box[1]:part[1] - box[1] + part[3]] = True
    return mask if mask.any() else None


def _tissue_in(tissue: TissueMask, box: Box, scale: float) -> np.ndarray:
    """The tissue mask at the centres of the class-map pixels of ``box`` (outside the mask: none)."""
    y, x, h, w = box
    padded = np.pad(tissue.mask, ((0, 1), (0, 1)))  # the last row and column stand for "outside"
    rows, row_runs = _runs(y, h, scale / tissue.downsample, tissue.mask.shape[0])
    cols, col_runs = _runs(x, w, scale / tissue.downsample, tissue.mask.shape[1])
    # nearest-neighbour upsampling as runs of repeated mask pixels: far faster than fancy indexing
    return np.repeat(np.repeat(padded[np.ix_(rows, cols)], row_runs, axis=0), col_runs, axis=1)


def _runs(start: int, length: int, factor: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask indices under pixels ``start .. start + length`` (``size`` for those beyond the mask),
    as distinct indices and how many pixels each covers."""
    index = np.minimum(np.floor((np.arange(start, start + length) + 0.5) * factor).astype(np.int64), size)
    distinct, runs = np.unique(index, return_counts=True)  # sorted: runs in order
    return distinct, runs


class _Regions:
    """Counts the 4-connected components of at least ``min_px`` pixels of a mask given block by
    block, row-major. A component within one block is counted at once; one touching its block's
    edge gets an id, joined (union-find) to the ids it meets across edges, and counted at the end."""

    def __init__(self, width: int, min_px: int | None):
        self.min_px = min_px
        self.above = np.zeros(width, np.int64)  # ids along the bottom edge of the block row above
        self.left = np.zeros(0, np.int64)  # ids along the right edge of the previous block
        self.parent = np.zeros(1024, np.int64)
        self.area = np.zeros(1024, np.int64)
        self.ids = 1  # id 0: no component
        self.inner = 0  # components within one block, counted

    def add(self, box: Box, mask: np.ndarray | None) -> None:
        if self.min_px is None:
            return
        y, x, h, w = box
        if mask is None or not mask.any():
            self.above[x:x + w] = 0
            self.left = np.zeros(h, np.int64)
            return
        local, n = ndimage.label(mask, structure=_FOUR_CONNECTED)
        sizes = np.bincount(local.ravel(), minlength=n + 1)
        edge = np.zeros(n + 1, bool)
        for line in (local[0], local[-1], local[:, 0], local[:, -1]):
            edge[line] = True
        edge[0] = False
        self.inner += int(np.count_nonzero(~edge[1:] & (sizes[1:] >= self.min_px)))
        lut = np.zeros(n + 1, np.int64)
        found = np.flatnonzero(edge)
        lut[found] = self._new(sizes[found])
        if y > 0:
            self._join(self.above[x:x + w], lut[local[0]])
        if x > 0:
            self._join(self.left, lut[local[:, 0]])
        self.above[x:x + w] = lut[local[-1]]
        self.left = lut[local[:, -1]]

    def _new(self, sizes: np.ndarray) -> np.ndarray:
        first, k = self.ids, len(sizes)
        while first + k > len(self.parent):
            self.parent = np.concatenate([self.parent, np.zeros_like(self.parent)])
            self.area = np.concatenate([self.area, np.zeros_like(self.area)])
        ids = np.arange(first, first + k)
        self.parent[ids] = ids
        self.area[ids] = sizes
        self.ids += k
        return ids

    def _join(self, a: np.ndarray, b: np.ndarray) -> None:
        both = (a > 0) & (b > 0)
        if not both.any():
            return
        for i, j in np.unique(np.stack([a[both], b[both]], axis=1), axis=0):
            ri, rj = self._root(int(i)), self._root(int(j))
            if ri != rj:
                self.parent[max(ri, rj)] = min(ri, rj)

    def _root(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = int(parent[root])
        while parent[i] != root:
            parent[i], i = root, int(parent[i])
        return root

    def count(self) -> int | None:
        if self.min_px is None:
            return None
        parent = self.parent[:self.ids]
        while True:  # pointer jumping: every id to its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        areas = np.bincount(parent[1:], weights=self.area[1:self.ids], minlength=self.ids)
        roots = np.flatnonzero(parent == np.arange(self.ids))
        roots = roots[roots > 0]
        return self.inner + int(np.count_nonzero(areas[roots] >= self.min_px))


# -- keeping the metadata up to date --------------------------------------------------------------------
def update_metadata(root: str | os.PathLike | ClassMap, slide=None, min_region_area_um2: float | None = None,
                    progress: Progress | None = None) -> Burden:
    """Measure the class map in ``root`` and store the figures (and the tissue mask) in its metadata.

    Call it after anything that changes the labels (a run, an applied review, an import), once that
    change has let go of the folder's lock: measuring reads the whole map (a minute or more on a big
    slide) without the lock, so that it never holds up a run or an Apply; the figures are stored
    under the lock only if the map did not change meanwhile, else measured again (twice at most;
    a map that keeps changing keeps figures that :func:`stored` no longer gives). A
    :class:`~napari_samlung.results.lock.Busy` error while another process writes.
    ``min_region_area_um2`` defaults to the one stored last.
    """
    cm = root if isinstance(root, ClassMap) else ClassMap.open(root, mode="r+")
    if cm.group.read_only:
        cm = ClassMap.open(cm.root, mode="r+")
    for _ in range(3):
        cm.refresh()
        before = basis(cm)
        if min_region_area_um2 is None:
            previous = cm.meta.get(META_KEY)
            min_region_area_um2 = float(previous["min_region_area_um2"]) if isinstance(previous, dict) and \
                "min_region_area_um2" in previous else DEFAULT_MIN_REGION_UM2
        tissue, save = tissue_for(cm, slide)
        figures = measure(cm, tissue, min_region_area_um2, progress=progress)
        with writing(cm.root, "storing the tumour burden"):
            cm.refresh()
            if basis(cm) != before:
                continue
            if save and tissue is not None:
                _save_tissue(cm.root, tissue, slide.mpp if slide is not None else
                             (cm.meta.get("slide") or {}).get("mpp"))
            cm.update_meta(**{META_KEY: figures.to_meta()})
            return figures
    return figures


def current(root: str | os.PathLike, slide=None, min_region_area_um2: float | None = None,
            progress: Progress | None = None) -> Burden:
    """The stored figures while they describe the map (counted with ``min_region_area_um2`` when
    given), else measured and stored afresh."""
    cm = ClassMap.open(root)
    found = stored(cm, min_region_area_um2)
    return found if found is not None else update_metadata(root, slide, min_region_area_um2, progress)
