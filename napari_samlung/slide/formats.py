"""Which kind of file a slide is, and which TIFF pages hold its pyramid levels.

TIFF, PNG and JPEG are told by their first bytes; DICOM by its magic after the preamble; other
scanners' files (MIRAX, VMS) by OpenSlide's own detection; OME-Zarr images and DICOM series are
folders.

Associated images (the thumbnail, label and macro of an SVS; the macro and map of an NDPI; extra
OME images) are never levels: levels come from the main image series, and every level must have
level 0's aspect ratio (a downsample of the same image) and be smaller than the one before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .color import SUPPORTED_CHANNELS, SUPPORTED_DTYPES
from .errors import SlideError
from .metadata import SlideMetadata, aperio_metadata, ome_metadata, resolution_metadata
from .omezarr_source import is_zarr_folder
from .openslide_source import detect_vendor, dicom_file_in, is_dicom_file

ASSOCIATED_SERIES = {"thumbnail", "label", "macro", "map", "overview"}
_SUPPORTED_PHOTOMETRIC = {0, 1, 2, 6}  # min-is-white, min-is-black, RGB, YCbCr
_JPEG_COMPRESSIONS = {6, 7}


# Slide files by name: TIFF family (tifffile first), and the formats only OpenSlide reads.
# DICOM files may have no extension, and DICOM series and OME-Zarr images are folders.
TIFF_EXTENSIONS = (".svs", ".ndpi", ".tif", ".tiff")  # .ome.tif(f) end in .tif(f)
OPENSLIDE_EXTENSIONS = (".dcm", ".mrxs", ".scn", ".bif", ".vms", ".vmu")
SLIDE_EXTENSIONS = TIFF_EXTENSIONS + OPENSLIDE_EXTENSIONS
SLIDE_PATTERNS = tuple(f"*{extension}" for extension in SLIDE_EXTENSIONS)


def is_slide_candidate(path: str | Path) -> bool:
    """Whether ``path`` may be a slide, judged cheaply (name, folder markers, DICOM magic) without
    opening it: front ends call this to decide whether to try :func:`~.reader.open_slide`."""
    path = Path(path)
    if path.is_dir():
        return is_zarr_folder(path) or dicom_file_in(path) is not None
    return path.name.lower().endswith(SLIDE_EXTENSIONS) or (path.is_file() and is_dicom_file(path))


def sniff(path: Path) -> str:
    """What kind of slide ``path`` is, from its first bytes (or, for a folder, its contents):
    'tiff', 'png', 'jpeg', 'ome-zarr', 'dicom-folder' or 'openslide' (a file OpenSlide detects:
    DICOM, MIRAX, VMS, ...); SlideError for anything else."""
    if not path.exists():
        raise SlideError(path, "file not found")
    if path.is_dir():
        if is_zarr_folder(path):
            return "ome-zarr"
        if dicom_file_in(path) is not None:
            return "dicom-folder"
        raise SlideError(path, "a folder that is neither an OME-Zarr image nor a DICOM whole-slide image")
    if not path.is_file():
        raise SlideError(path, "not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise SlideError(path, f"cannot read the file: {exc.strerror or exc}") from exc
    if not head:
        raise SlideError(path, "file is empty")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if is_dicom_file(path) or detect_vendor(path) is not None:
        return "openslide"
    raise SlideError(path, "not a slide or image file this reader supports (expected TIFF/SVS/NDPI/"
                           "OME-TIFF, DICOM, MIRAX, SCN, BIF, VMS, Philips TIFF, OME-Zarr, PNG or JPEG)")


@dataclass
class TiffLayout:
    """The format name, the pages of each level (level 0 first) and the metadata of a TIFF slide."""

    format: str
    levels: list[list]  # per level: one page, or one page per channel
    metadata: SlideMetadata


def tiff_layout(tif, path: Path) -> TiffLayout:
    """Find the levels and metadata of an open ``tifffile.TiffFile``."""
    if tif.is_svs:
        fmt = "aperio-svs"
    elif tif.is_ome:
        fmt = "ome-tiff"
    elif tif.is_ndpi:
        fmt = "ndpi"
    else:
        fmt = "pyramidal-tiff"
    candidates = [s for s in tif.series if (s.name or "").lower() not in ASSOCIATED_SERIES and s.levels]
    if not candidates:
        raise SlideError(path, "TIFF file holds no image")
    series = max(candidates, key=lambda s: _area(s.levels[0].keyframe))
    # tifffile groups pyramids stored as SubIFDs or as pages of decreasing size into levels
    levels = _pyramid_only([_level_planes(level, path) for level in series.levels])
    if len(levels) == 1 and fmt == "pyramidal-tiff":
        fmt = "image"
    for index, planes in enumerate(levels):
        _check_supported(planes[0].keyframe, path, index)
    return TiffLayout(fmt, levels, _metadata(tif, fmt, series, levels[0][0]))


def _area(page) -> int:
    return int(page.imagelength) * int(page.imagewidth)


def _level_planes(level, path: Path) -> list:
    """The first plane (first Z, T, ...) of one level series: one page, or one per channel."""
    axes, shape = level.axes, level.shape
    outer = axes[: axes.index("Y")] if "Y" in axes else ""
    outer_shape = shape[: len(outer)]
    channels = 1
    if "C" in outer and "S" not in axes[len(outer):]:
        channels = outer_shape[outer.index("C")]
        if channels not in SUPPORTED_CHANNELS:
            raise SlideError(path, f"unsupported image: {channels} channels stored as separate planes")
    pages = []
    for c in range(channels):
        index = [0] * len(outer)
        if channels > 1:
            index[outer.index("C")] = c
        flat = int(np.ravel_multi_index(index, outer_shape)) if outer else 0
        page = level.pages[flat] if flat < len(level.pages) else None
        if page is None:
            raise SlideError(path, f"image plane {flat} of the pyramid is missing from the file")
        pages.append(page)
    return pages


def _pyramid_only(levels: list[list]) -> list[list]:
    """Keep level 0 and each following level that is a smaller copy with level 0's aspect ratio."""
    h0, w0 = _shape(levels[0][0])
    kept = [levels[0]]
    for planes in sorted(levels[1:], key=lambda planes: -_area(planes[0].keyframe)):
        h, w = _shape(planes[0])
        last_h, last_w = _shape(kept[-1][0])
        if not (h < last_h and w < last_w) or h < 1 or w < 1:
            continue
        # each side of a level is level 0's divided by the downsample, rounded either way
        low = max(h0 / (h + 1), w0 / (w + 1))
        high = min(h0 / max(h - 1, 0.5), w0 / max(w - 1, 0.5))
        if low <= high:
            kept.append(planes)
    return kept


def _shape(page) -> tuple[int, int]:
    return int(page.keyframe.imagelength), int(page.keyframe.imagewidth)


def _check_supported(page, path: Path, level: int) -> None:
    """SlideError when a level's pixels are of a kind this reader cannot turn into RGB."""
    kf = page.keyframe
    where = f"level {level}"
    if kf.dtype not in SUPPORTED_DTYPES:
        raise SlideError(path, f"unsupported image: {where} has {kf.bitspersample}-bit samples of type "
                               f"{kf.dtype} (8- or 16-bit unsigned integers are supported)")
    if kf.samplesperpixel not in SUPPORTED_CHANNELS:
        raise SlideError(path, f"unsupported image: {where} has {kf.samplesperpixel} samples per pixel")
    if kf.photometric not in _SUPPORTED_PHOTOMETRIC:
        raise SlideError(path, f"unsupported image: {where} has photometric interpretation "
                               f"{getattr(kf.photometric, 'name', kf.photometric)}")
    if kf.photometric == 6 and kf.compression not in _JPEG_COMPRESSIONS:
        raise SlideError(path, f"unsupported image: {where} stores YCbCr without JPEG compression")
    if kf.imagedepth > 1:
        raise SlideError(path, f"unsupported image: {where} is a volume (image depth {kf.imagedepth})")
    decode = kf.decode
    if decode.__name__.startswith("decode_raise"):  # tifffile's stand-in for an unusable codec
        try:
            decode(None, 0)
        except Exception as exc:
            raise SlideError(path, f"unsupported image: {where} cannot be decoded: {exc}") from exc


def _metadata(tif, fmt: str, series, first_page) -> SlideMetadata:
    if fmt == "aperio-svs":
        meta = aperio_metadata(first_page.keyframe.description)
    elif fmt == "ome-tiff":
        meta = ome_metadata(tif.ome_metadata or "", tif.series.index(series))
    else:
        meta = SlideMetadata()
    if fmt == "ndpi":
        lens = first_page.keyframe.tags.valueof(65421)  # SourceLens: the objective (macro: -1)
        if isinstance(lens, (int, float)) and lens > 0:
            meta.magnification = float(lens)
            meta.properties["hamamatsu.SourceLens"] = f"{lens:g}"
    if meta.mpp is None and meta.mpp_note is None:
        resolution_metadata(first_page.keyframe, meta)
    return meta
