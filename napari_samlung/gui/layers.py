"""napari layer data for slides, class maps, reviewed regions and review drafts (no Qt, no napari).

Each builder returns a napari ``LayerData`` tuple ``(data, kwargs, layer_type)``, which the reader
returns as it is and the widget adds with ``viewer.add_<type>(data, **kwargs)``. The metadata
keys below tie the layers of one slide together, so the widget finds them again whoever added
them (the reader on opening, or the widget itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_samlung.results.drafts import Draft
from napari_samlung.geometry import SlideFrame
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.ome import class_names, label_rgba
from napari_samlung.labels import IGNORE

LayerData = tuple[Any, dict[str, Any], str]

ROLE = "samlung_role"  # 'slide', 'classmap', 'confidence', 'reviewed', 'draft' or IDLE_DRAFT
IDLE_DRAFT = "idle draft"  # a draft layer with no review open, kept for the next review
SLIDE_PATH = "samlung_slide"  # the slide file (absolute path), on every layer of the slide
RESULTS = "samlung_results"  # the result folder of class-map, reviewed and draft layers
DRAFT_ID = "samlung_draft"
DRAFT_BOX = "samlung_box"  # a draft's (y, x, h, w) in class-map pixels

TRANSPARENT = (0.0, 0.0, 0.0, 0.0)
REVIEWED_EDGE = "yellow"
CLASSMAP_OPACITY = 0.5  # filled: the tissue shows through
OUTLINE_OPACITY = 1.0  # outlined: thin lines must be opaque to read on pink and purple H&E
OUTLINE_WIDTH = 3  # pixels of the level napari shows, so about the same on screen at every zoom


def slide_frame(slide) -> SlideFrame:
    """World placement of a slide opened on its own: micrometres when its mpp is known."""
    return mpp_frame(slide.mpp)


def mpp_frame(mpp: float | None) -> SlideFrame:
    """World placement of a slide of ``mpp`` microns per pixel (None: unknown, so pixels)."""
    if mpp:
        return SlideFrame((mpp, mpp), (0.0, 0.0), ("um", "um"))
    return SlideFrame()


def slide_layer(slide) -> LayerData:
    """The slide as a lazy (multiscale when it has a pyramid) RGB image layer."""
    frame = slide_frame(slide)
    kwargs = {
        "name": slide.name,
        "rgb": True,
        "multiscale": len(slide.levels) > 1,
        "contrast_limits": (0, 255),  # known for uint8: napari need not look at the pixels
        "scale": frame.scale,
        "metadata": {ROLE: "slide", SLIDE_PATH: str(Path(slide.path).resolve()), "mpp": slide.mpp,
                     "format": slide.format},
    }
    if frame.units:
        kwargs["units"] = frame.units
    data = list(slide.levels) if kwargs["multiscale"] else slide.levels[0]
    return data, kwargs, "image"


def label_colors(num_classes: int) -> dict[int | None, tuple[float, ...]]:
    """Direct label colours: background transparent, classes as in labels.py, ignore grey."""
    colors: dict[int | None, tuple[float, ...]] = {None: TRANSPARENT}
    for value in (*range(num_classes + 1), IGNORE):
        colors[value] = tuple(c / 255 for c in label_rgba(value))  # as the class map's OME-Zarr metadata
    return colors


def class_features(cm: ClassMap) -> dict[str, list]:
    """The class name of each label value as a labels-layer features table: napari's status bar then
    names the class under the cursor ("class: Tumor")."""
    return features_table(class_names(cm.meta))


def features_table(names: dict[int, str]) -> dict[str, list]:
    """Label value -> class name as a labels-layer features table."""
    values = sorted(names)
    return {"index": values, "class": [names[value] for value in values]}


def _placed(frame: SlideFrame, scale: float, offset: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    layer_scale, translate = frame.grid_placement(scale, offset)
    placed: dict[str, Any] = {"scale": layer_scale, "translate": translate}
    if frame.units:
        placed["units"] = frame.units
    return placed


def _tags(cm: ClassMap, slide_path: str | os.PathLike, role: str) -> dict[str, Any]:
    return {ROLE: role, SLIDE_PATH: str(Path(slide_path).resolve()), RESULTS: str(Path(cm.root).resolve())}


class ShownLevel:
    """A class-map level as napari reads it for drawing. A chunk that cannot be decoded would raise
    inside napari's drawing, again at every redraw; here the part asked for shows as not reviewed
    (grey), and the widget names the damaged chunk in one line (it checks the checksums when the
    results open)."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except Exception:  # the codec's error for a damaged chunk file
            shape = np.lib.stride_tricks.as_strided(np.zeros(1, bool), self.shape, (0,) * self.ndim)[key].shape
            return np.full(shape, IGNORE, self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)


def classmap_layer(cm: ClassMap, frame: SlideFrame, slide_path: str | os.PathLike, name: str) -> LayerData:
    """The on-disk class map as a (read-only) multiscale labels layer over the slide."""
    kwargs = {
        "name": f"{name} segmentation",
        "multiscale": len(cm.levels) > 1,
        "colormap": label_colors(cm.num_classes),
        "features": class_features(cm),
        "opacity": CLASSMAP_OPACITY,
        "metadata": _tags(cm, slide_path, "classmap"),
        **_placed(frame, cm.scale),
    }
    levels = [ShownLevel(level) for level in cm.levels]
    return (levels if kwargs["multiscale"] else levels[0]), kwargs, "labels"


#: Confidence as colour: unsure pixels bright green (it reads on pink and purple H&E), fading out
#: as the model grows sure; not-segmented pixels (0) clear. A napari colormap given as a dict.
CONFIDENCE_COLORMAP = {
    "name": "samlung confidence",
    "colors": [[0.0, 0.0, 0.0, 0.0], [0.1, 1.0, 0.3, 0.9], [0.1, 1.0, 0.3, 0.0]],
    "controls": [0.0, 1 / 255, 1.0],
    "interpolation": "linear",
}


def confidence_layer(confidence: ClassMap, cm: ClassMap, frame: SlideFrame, slide_path: str | os.PathLike,
                     name: str) -> LayerData:
    """The confidence pyramid (``results/confidence.py``) as a multiscale image layer over the slide,
    hidden until the user turns it on."""
    kwargs = {
        "name": f"{name} confidence",
        "multiscale": len(confidence.levels) > 1,
        "colormap": CONFIDENCE_COLORMAP,
        "contrast_limits": (0, 255),
        "visible": False,
        "metadata": _tags(cm, slide_path, "confidence"),
        **_placed(frame, cm.scale),
    }
    levels = [ShownLevel(level) for level in confidence.levels]
    return (levels if kwargs["multiscale"] else levels[0]), kwargs, "image"


def reviewed_rectangles(cm: ClassMap, frame: SlideFrame) -> list[list[list[float]]]:
    """World corners of every reviewed region of ``cm``."""
    return [frame.box_to_world_rect(tuple(record["box"]), cm.scale) for record in cm.reviewed]


def reviewed_edge_width(cm: ClassMap, frame: SlideFrame) -> float:
    """Outline width (world units) of the reviewed regions: a fiftieth of the smallest one's side,
    at least 2 level-0 pixels."""
    side = min((min(r["box"][2:]) for r in cm.reviewed), default=64) * cm.scale
    return max(2.0, side / 50) * max(frame.scale)


def reviewed_layer(cm: ClassMap, frame: SlideFrame, slide_path: str | os.PathLike, name: str) -> LayerData:
    """The reviewed regions as outlined rectangles (display only: the class map records them)."""
    kwargs = {
        "name": f"{name} reviewed regions",
        "shape_type": "rectangle",
        "edge_color": REVIEWED_EDGE,
        "face_color": "transparent",
        "edge_width": reviewed_edge_width(cm, frame),
        "metadata": _tags(cm, slide_path, "reviewed"),
    }
    if frame.units:
        kwargs["units"] = frame.units
    return reviewed_rectangles(cm, frame), kwargs, "shapes"


def draft_layer(draft: Draft, frame: SlideFrame, slide_path: str | os.PathLike, name: str) -> LayerData:
    """An editable labels layer whose data is the draft's zarr array: every stroke lands on disk."""
    cm = draft.classmap
    metadata = {**_tags(cm, slide_path, "draft"), DRAFT_ID: draft.id, DRAFT_BOX: [int(v) for v in draft.box]}
    kwargs = {
        "name": f"{name} review {draft.id}",
        "colormap": label_colors(cm.num_classes),
        "features": class_features(cm),
        "opacity": 0.7,
        "metadata": metadata,
        **_placed(frame, cm.scale, draft.box[:2]),
    }
    return draft.data, kwargs, "labels"


def idle_draft_layer(cm: ClassMap, frame: SlideFrame, slide_path: str | os.PathLike, name: str) -> LayerData:
    """A hidden draft layer with no review open (a 1 x 1 placeholder), which the next review of
    ``cm`` takes over instead of adding a layer."""
    kwargs = {
        "name": idle_draft_name(name),
        "colormap": label_colors(cm.num_classes),
        "features": class_features(cm),
        "opacity": 0.7,
        "visible": False,
        "metadata": _tags(cm, slide_path, IDLE_DRAFT),
        **_placed(frame, cm.scale),
    }
    return np.zeros((1, 1), np.uint8), kwargs, "labels"


def idle_draft_name(name: str) -> str:
    return f"{name} review (none open)"


def results_layers(root: Path, frame: SlideFrame, slide_path: str | os.PathLike,
                   name: str) -> list[LayerData]:
    """The class-map layer, plus the reviewed-regions layer when there are reviewed regions."""
    cm = ClassMap.open(root)
    layers = [classmap_layer(cm, frame, slide_path, name)]
    if cm.reviewed:
        layers.append(reviewed_layer(cm, frame, slide_path, name))
    return layers
