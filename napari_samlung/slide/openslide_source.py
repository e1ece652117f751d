"""Slides from other scanners through OpenSlide: DICOM WSI, MIRAX, Leica SCN, Ventana BIF,
Hamamatsu VMS/VMU, Philips TIFF.

OpenSlide (``openslide-python`` with the ``openslide-bin`` wheel: no system library) decodes them.
Reads go through the same tiled reader and cache as TIFF slides (``tiles.py``): each level is cut
into bounded tiles, each read with one ``read_region`` call, in parallel threads (OpenSlide is
thread-safe and its ctypes calls release the GIL). Nothing reads a whole level. OpenSlide gives
RGBA; transparent pixels (outside the scanned area) are composited over white.

``read_region`` places a tile by its level-0 position; where a level's downsample is not a whole
number (odd level-0 sides), that position maps to up to 1/4 px (1/(2 x downsample)) off the tile's
level position, and OpenSlide interpolates: such levels differ slightly from one whole-level read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .color import to_rgb
from .errors import SlideError
from .metadata import openslide_metadata
from .tiles import TiledSource, tile_side

# OpenSlide's vendor names -> the slide format names the project reports.
VENDOR_FORMATS = {
    "dicom": "dicom", "mirax": "mirax", "leica": "leica-scn", "ventana": "ventana-bif",
    "hamamatsu": "hamamatsu", "philips": "philips-tiff", "aperio": "aperio-svs",
    "generic-tiff": "pyramidal-tiff", "sakura": "sakura-svslide", "trestle": "trestle-tif",
    "zeiss": "zeiss-czi",
}
_DICOM_MAGIC_OFFSET = 128


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICOM_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_file_in(folder: Path) -> Path | None:
    """A DICOM file of the folder (any file of a series lets OpenSlide find the rest), or None."""
    try:
        names = sorted(folder.iterdir())
    except OSError as exc:
        raise SlideError(folder, f"cannot list the folder: {exc.strerror or exc}") from exc
    return next((p for p in names if p.is_file() and is_dicom_file(p)), None)


def detect_vendor(path: Path) -> str | None:
    """OpenSlide's vendor name for the file ('dicom', 'mirax', ...), or None when it reads none."""
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # OpenSlide raises for unreadable files: then it is not one of its slides
        return None


class OpenSlideLevel:
    """One level of an OpenSlide slide as tiles: tile (iy, ix) is one bounded ``read_region``."""

    def __init__(self, osr, index: int, path: Path) -> None:
        self.index = index
        self._osr = osr
        self._path = path
        w, h = osr.level_dimensions[index]
        self.shape = (int(h), int(w))
        self.downsample = float(osr.level_downsamples[index])
        props = osr.properties
        self.tile_shape = (tile_side(_native_side(props.get(f"openslide.level[{index}].tile-height"))),
                           tile_side(_native_side(props.get(f"openslide.level[{index}].tile-width"))))
        self.grid = (-(-self.shape[0] // self.tile_shape[0]), -(-self.shape[1] // self.tile_shape[1]))

    def decode(self, iy: int, ix: int) -> np.ndarray:
        """Tile (iy, ix) as RGB, cut at the level's right and bottom edges."""
        import openslide

        th, tw = self.tile_shape
        y, x = iy * th, ix * tw
        h, w = min(th, self.shape[0] - y), min(tw, self.shape[1] - x)
        # read_region takes level-0 coordinates for the top left corner
        location = (round(x * self.downsample), round(y * self.downsample))
        try:
            rgba = self._osr.read_region(location, self.index, (w, h))
        except openslide.OpenSlideError as exc:
            raise SlideError(self._path, f"cannot read level {self.index} tile ({iy}, {ix}): {exc}") from exc
        alpha = rgba.getchannel("A").getextrema()
        if alpha == (255, 255):  # opaque, as nearly every tile is: PIL drops alpha fastest
            return np.asarray(rgba.convert("RGB"))
        return np.ascontiguousarray(to_rgb(np.asarray(rgba)))


def _native_side(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def open_openslide(path: Path, file: Path | None = None) -> TiledSource:
    """Open ``file`` (default ``path``; for a DICOM folder, one of its files) with OpenSlide.

    Raises :class:`SlideError` naming ``path`` when OpenSlide cannot read it.
    """
    import openslide

    try:
        osr = openslide.OpenSlide(str(file or path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(path, "not a slide OpenSlide can read (unsupported format, or files of the "
                               "slide are missing)") from exc
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(path, f"OpenSlide cannot read the slide: {exc}") from exc
    try:
        props = dict(osr.properties)
        vendor = props.get("openslide.vendor", "")
        levels = [OpenSlideLevel(osr, i, path) for i in range(osr.level_count)]
        if not levels or min(levels[0].shape) < 1:
            raise SlideError(path, "OpenSlide finds no image in the slide")
    except Exception:
        osr.close()
        raise
    return TiledSource(VENDOR_FORMATS.get(vendor, vendor or "openslide"), openslide_metadata(props), levels,
                       resources=(osr,))
