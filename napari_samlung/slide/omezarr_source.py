"""OME-Zarr images as slides: NGFF 0.4 (zarr v2, ``.zattrs``) and 0.5 (zarr v3, attributes under
``"ome"``), also in the bioformats2raw layout (series ``0`` of a root group beside ``OME/``).

Levels are the datasets of the first multiscale, read through the tiled reader (``tiles.py``): a
tile is a chunk of the y and x axes (bounded, see :func:`~.tiles.tile_side`) with all channels, at
the first index of every other axis (time point, z-plane). Channels: 1 gray, 2 gray + alpha,
3 RGB, 4 RGBA; with more, the three whose ``omero`` colours are red, green and blue.
Microns per pixel: the x-axis scale of level 0 (times the multiscale's own scale) in its unit.

The metadata is read from the attributes as JSON, leniently: ome-zarr-models validates strictly
and refuses layouts such as y, x, c axes that some writers produce and that can be read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .color import SUPPORTED_DTYPES, to_rgb
from .errors import SlideError
from .metadata import SlideMetadata, ngff_metadata, ome_metadata
from .tiles import TiledSource, tile_side

ZARR_MARKERS = (".zattrs", ".zgroup", "zarr.json")
_AXIS_TYPES = {"x": "space", "y": "space", "z": "space", "c": "channel", "t": "time"}
_RGB_COLORS = ("FF0000", "00FF00", "0000FF")


def is_zarr_folder(path: Path) -> bool:
    """Whether ``path`` is a zarr group or array (v2 or v3) folder."""
    return path.is_dir() and any((path / marker).is_file() for marker in ZARR_MARKERS)


def _ome(attrs: dict) -> dict:
    """The OME attributes of a group: under ``"ome"`` (0.5) or the attributes themselves (0.4)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


class OmeZarrLevel:
    """One multiscale dataset as tiles of (h, w, 3) uint8."""

    def __init__(self, array, index: int, axes: list[dict], channels: list[int] | None, path: Path) -> None:
        self.index = index
        self._array = array
        self._path = path
        names = [a["name"] for a in axes]
        self._y, self._x = names.index("y"), names.index("x")
        self._c = next((i for i, a in enumerate(axes) if a.get("type") == "channel"), None)
        self._channels = channels
        self.shape = (int(array.shape[self._y]), int(array.shape[self._x]))
        self.tile_shape = (tile_side(int(array.chunks[self._y])), tile_side(int(array.chunks[self._x])))

    def decode(self, iy: int, ix: int) -> np.ndarray:
        """Tile (iy, ix) as RGB, cut at the level's right and bottom edges."""
        th, tw = self.tile_shape
        key: list = [0] * self._array.ndim
        key[self._y] = slice(iy * th, min((iy + 1) * th, self.shape[0]))
        key[self._x] = slice(ix * tw, min((ix + 1) * tw, self.shape[1]))
        if self._c is not None:
            key[self._c] = slice(None)
        try:
            block = np.asarray(self._array[tuple(key)])
        except Exception as exc:  # zarr and its codecs raise many types for damaged chunks
            raise SlideError(self._path, f"cannot read level {self.index} chunk ({iy}, {ix}): {exc}") from exc
        if self._c is None:
            return np.ascontiguousarray(to_rgb(block))
        kept = [i for i in range(self._array.ndim) if isinstance(key[i], slice)]  # axes left, in order
        block = np.moveaxis(block, kept.index(self._c), -1)
        if self._channels is not None:
            block = block[..., self._channels]
        return np.ascontiguousarray(to_rgb(block))


def open_omezarr(path: Path) -> TiledSource:
    """Open an OME-Zarr image folder; :class:`SlideError` naming ``path`` when it is not one this
    reader can show as an RGB slide."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for damaged metadata
        raise SlideError(path, f"cannot open the zarr group: {exc}") from exc
    group, ome = root, _ome(dict(root.attrs))
    layout = "bioformats2raw.layout" in ome and "multiscales" not in ome
    if layout:
        try:
            group = root["0"]
        except KeyError as exc:
            raise SlideError(path, "bioformats2raw layout without its first image (series 0)") from exc
        ome = _ome(dict(group.attrs))
    if "image-label" in ome:
        raise SlideError(path, "an OME-Zarr label image (such as a class map), not a slide")
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise SlideError(path, "a zarr folder without OME-Zarr multiscales metadata: not an OME-Zarr image")
    ms = multiscales[0]
    try:
        axes = _axes(ms)
        datasets = [(d["path"], _scales(d)) for d in ms["datasets"]]
        arrays = [group[p] for p, _ in datasets]
    except (KeyError, TypeError, ValueError) as exc:
        raise SlideError(path, f"incomplete OME-Zarr multiscales metadata or missing level: {exc}") from exc
    if not datasets:
        raise SlideError(path, "OME-Zarr multiscales metadata lists no datasets")
    _check_arrays(path, arrays, axes)
    channels = _rgb_channels(path, arrays[0], axes, ome.get("omero"))
    levels = _pyramid([OmeZarrLevel(a, i, axes, channels, path) for i, a in enumerate(arrays)])
    version = str(ome.get("version") or ms.get("version") or "")
    meta = _metadata(axes, datasets[0][1], _scales(ms), root if layout else None)
    meta.properties["ome-zarr.version"] = version
    others = {a["name"]: arrays[0].shape[i] for i, a in enumerate(axes) if a["name"] not in ("y", "x")
              and a.get("type") != "channel" and arrays[0].shape[i] > 1}
    if others:
        meta.properties["ome-zarr.plane"] = ", ".join(f"{k}=0 of {v}" for k, v in others.items())
    for i, level in enumerate(levels):
        level.index = i
    return TiledSource("ome-zarr", meta, levels)


def _axes(ms: dict) -> list[dict]:
    """Axes as dicts with a name and a type (NGFF 0.3 lists bare names)."""
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in ms["axes"]]
    for axis in axes:
        axis.setdefault("type", _AXIS_TYPES.get(axis["name"]))
    names = [a["name"] for a in axes]
    if "y" not in names or "x" not in names:
        raise ValueError(f"axes {names} have no y and x")
    return axes


def _scales(node: dict) -> list[float] | None:
    """The scale of a dataset's (or multiscale's) coordinate transformations, or None."""
    for transform in node.get("coordinateTransformations") or ():
        if transform.get("type") == "scale" and isinstance(transform.get("scale"), list):
            return [float(v) for v in transform["scale"]]
    return None


def _check_arrays(path: Path, arrays: list, axes: list[dict]) -> None:
    for i, array in enumerate(arrays):
        if array.ndim != len(axes):
            raise SlideError(path, f"level {i} has {array.ndim} dimensions for {len(axes)} axes")
        if np.dtype(array.dtype) not in SUPPORTED_DTYPES:
            raise SlideError(path, f"unsupported image: level {i} has samples of type {array.dtype} "
                                   "(8- or 16-bit unsigned integers are supported)")


def _rgb_channels(path: Path, array, axes: list[dict], omero) -> list[int] | None:
    """The channel indices to show as RGB when there are more than 4 channels, else None (all)."""
    c = next((i for i, a in enumerate(axes) if a.get("type") == "channel"), None)
    count = 1 if c is None else int(array.shape[c])
    if count <= 4:
        return None
    colors = [str(ch.get("color", "")).upper() for ch in (omero or {}).get("channels", [])]
    if all(color in colors for color in _RGB_COLORS):
        return [colors.index(color) for color in _RGB_COLORS]
    raise SlideError(path, f"unsupported image: {count} channels, and no red, green and blue channels "
                           "named by their omero colours")


def _pyramid(levels: list[OmeZarrLevel]) -> list[OmeZarrLevel]:
    """Level 0 and each following level smaller than the one kept before it."""
    kept = [levels[0]]
    for level in levels[1:]:
        if level.shape[0] < kept[-1].shape[0] and level.shape[1] < kept[-1].shape[1] and min(level.shape) > 0:
            kept.append(level)
    return kept


def _metadata(axes: list[dict], scale: list[float] | None, global_scale: list[float] | None,
              layout_root) -> SlideMetadata:
    """Microns per pixel from the x axis; for bioformats2raw without units, from its OME-XML."""
    x = [a["name"] for a in axes].index("x")
    value = scale[x] if scale is not None and len(scale) == len(axes) else None
    if value is not None and global_scale is not None and len(global_scale) == len(axes):
        value *= global_scale[x]
    meta = ngff_metadata(value, axes[x].get("unit"))
    if meta.mpp is None and layout_root is not None:
        xml = _ome_xml(layout_root)
        if xml:
            from_xml = ome_metadata(xml, 0)
            if from_xml.mpp is not None:
                from_xml.properties.update(meta.properties)
                return from_xml
    return meta


def _ome_xml(root) -> str | None:
    """bioformats2raw's ``OME/METADATA.ome.xml`` beside the series, when it is a local file."""
    store_root = getattr(root.store, "root", None)
    if store_root is None:
        return None
    xml = Path(store_root) / "OME" / "METADATA.ome.xml"
    try:
        return xml.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
