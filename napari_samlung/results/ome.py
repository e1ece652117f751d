"""OME-Zarr 0.5 metadata of a class map, so that other OME-Zarr tools open it as labels.

The class map group carries, beside the project's own "samlung" attributes, an "ome" attribute
with ``multiscales`` (axes y, x in micrometres, or in slide pixels when the slide's microns per
pixel are unknown) and ``image-label`` (a colour and a class name per label value). OME-Zarr
keeps labels under ``image.zarr/labels/NAME`` beside their image; a class map has no image beside
it (the slide is another file), so it is a standalone multiscale labels group with no ``source``.

Placement matches the viewer's (:meth:`napari_samlung.geometry.SlideFrame.grid_placement`): a
class-map pixel covers ``scale`` x ``scale`` level-0 slide pixels, so its centre sits half a
class-map pixel less half a slide pixel from the slide's first pixel centre. Level k holds
level-0 pixel (i * 2**k, j * 2**k) (subsampled, not block-reduced), so every level has level 0's
translation and 2**k times its scale.

The metadata is built with the ``ome-zarr-models`` classes, which validate it as it is made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_samlung.files import write_json_atomic
from napari_samlung.geometry import SlideFrame
from napari_samlung.labels import BACKGROUND, IGNORE, class_color, class_name

OME_VERSION = "0.5"
AXES = ("y", "x")  # also the level arrays' dimension names, as OME-Zarr 0.5 requires
UNIT = "micrometer"
CLEAR = (0, 0, 0, 0)  # background: nothing drawn over the tissue
NOT_REVIEWED = (128, 128, 128, 153)  # grey, as the viewer shows it


def label_rgba(value: int) -> tuple[int, int, int, int]:
    """RGBA (0-255) of a label value: background clear, classes in their colours, not reviewed grey."""
    if value == BACKGROUND:
        return CLEAR
    if value == IGNORE:
        return NOT_REVIEWED
    return (*class_color(value), 255)


def class_names(meta: dict[str, Any]) -> dict[int, str]:
    """Label value -> class name of a class map's "samlung" metadata, "Not reviewed" included."""
    num_classes = int(meta["num_classes"])
    names = {value: class_name(value, num_classes) for value in range(num_classes + 1)}
    names.update({int(value): str(name) for value, name in (meta.get("class_names") or {}).items()})
    names[IGNORE] = class_name(IGNORE)
    return dict(sorted(names.items()))


def level_placement(meta: dict[str, Any]) -> tuple[tuple[float, float], tuple[float, float], str | None]:
    """Level 0's (scale, translation) per axis (y, x) and their unit: micrometres when the slide's
    microns per pixel are known, else level-0 slide pixels (unit None)."""
    mpp = (meta.get("slide") or {}).get("mpp")
    frame = SlideFrame((float(mpp), float(mpp))) if mpp else SlideFrame()
    scale, translation = frame.grid_placement(float(meta["scale"]))
    return scale, translation, UNIT if mpp else None


def ome_attributes(meta: dict[str, Any]) -> dict[str, Any]:
    """The "ome" group attribute (OME-Zarr 0.5 ``multiscales`` + ``image-label``) for a class map
    with the "samlung" metadata ``meta``."""
    from ome_zarr_models.v05.axes import Axis
    from ome_zarr_models.v05.image_label import ImageLabelAttrs
    from ome_zarr_models.v05.image_label_types import Color, Label, Property
    from ome_zarr_models.v05.multiscales import Dataset, Multiscale

    (sy, sx), translation, unit = level_placement(meta)
    axes = [Axis(name=name, type="space", unit=unit) for name in AXES]
    datasets = [Dataset.build(path=str(k), scale=[sy * 2**k, sx * 2**k], translation=list(translation))
                for k in range(len(meta["levels"]))]
    name = (meta.get("slide") or {}).get("name") or "classmap"
    multiscale = Multiscale(axes=axes, datasets=datasets, name=f"{name} class map", type="subsample",
                            metadata={"method": "level k holds level-0 pixel (i * 2**k, j * 2**k)"})
    names = class_names(meta)
    label = Label(version=OME_VERSION,
                  colors=[Color(**{"label-value": v, "rgba": label_rgba(v)}) for v in names],
                  properties=[Property(**{"label-value": v, "class": n}) for v, n in names.items()])
    attrs = ImageLabelAttrs(version=OME_VERSION, multiscales=[multiscale], **{"image-label": label})
    return attrs.model_dump(mode="json", by_alias=True, exclude_none=True)


def name_dimensions(store: Path, levels: int) -> None:
    """Name the dimensions of the level arrays "0".."levels-1" of the zarr group at ``store`` (class
    maps made before the OME-Zarr metadata have none) by rewriting their zarr.json."""
    for k in range(levels):
        path = Path(store) / str(k) / "zarr.json"
        meta = json.loads(path.read_text())
        if meta.get("dimension_names") != list(AXES):
            write_json_atomic(path, {**meta, "dimension_names": list(AXES)}, indent=2)
