"""Finding and updating this plugin's layers in a napari viewer (napari only; no Qt widgets).

Layers are tied together by the metadata keys of :mod:`napari_samlung.gui.layers`, so these
helpers find a slide's class-map, reviewed-regions and draft layers whoever added them. They also
keep the view legible: the scale bar in micrometres, class outlines, and the reviewed-regions
layer a display that never takes the selection nor offers its move tools.

Adding a layer is the slowest thing napari does for a plugin (0.2-0.4 s of its main thread on a
slow machine: the layer's controls, its visual and the labels tools' overlays). A review therefore
adds no layer when it can help it: a closed review's layer is put aside, hidden, and the next review
of the same results takes it over, and :func:`missing_review_layers` lets the widget add the
reviewed-regions layer and a put-aside draft layer before the first review, while nothing else runs.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Layer, Shapes

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box, SlideFrame
from napari_samlung.gui._reader import EXTENSIONS, PLUGIN
from napari_samlung.gui.layers import (
    CLASSMAP_OPACITY,
    DRAFT_ID,
    IDLE_DRAFT,
    OUTLINE_OPACITY,
    OUTLINE_WIDTH,
    RESULTS,
    REVIEWED_EDGE,
    ROLE,
    SLIDE_PATH,
    LayerData,
    classmap_layer,
    draft_layer,
    idle_draft_layer,
    idle_draft_name,
    reviewed_edge_width,
    reviewed_layer,
    reviewed_rectangles,
)
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.drafts import Draft


class UserError(SamLungError):
    """Something the person at the viewer must change first (shown as a message, nothing done)."""


@dataclass(frozen=True)
class SlideContext:
    """A slide shown in the viewer: its image layer, file and world placement."""

    layer: Image
    path: Path
    name: str
    frame: SlideFrame

    @classmethod
    def of(cls, layer: Image) -> SlideContext:
        units = tuple(str(u) for u in layer.units[-2:])
        scale, translate = (tuple(float(v) for v in values[-2:]) for values in (layer.scale, layer.translate))
        frame = SlideFrame(scale, translate, None if all(u == "pixel" for u in units) else units)
        return cls(layer, Path(layer.metadata[SLIDE_PATH]), layer.name, frame)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 (h, w) of the slide."""
        data = self.layer.data[0] if self.layer.multiscale else self.layer.data
        return tuple(int(s) for s in data.shape[:2])  # type: ignore[return-value]


def is_slide_layer(layer: Layer) -> bool:
    return isinstance(layer, Image) and layer.metadata.get(ROLE) == "slide" and SLIDE_PATH in layer.metadata


def slide_of(viewer, layer: Layer) -> SlideContext | None:
    """The slide a layer belongs to (itself, or the slide of a result layer), if it is shown."""
    path = layer.metadata.get(SLIDE_PATH)
    if path is None:
        return None
    if is_slide_layer(layer):
        return SlideContext.of(layer)
    return next((SlideContext.of(other) for other in viewer.layers
                 if is_slide_layer(other) and other.metadata[SLIDE_PATH] == path), None)


def current_slide(viewer) -> SlideContext:
    """The slide of the selected layer, else the topmost slide; UserError when none is open."""
    active = viewer.layers.selection.active
    slide = slide_of(viewer, active) if active is not None else None
    if slide is not None:
        return slide
    slides = [layer for layer in viewer.layers if is_slide_layer(layer)]
    if not slides:
        raise UserError(_no_slide(viewer))
    return SlideContext.of(slides[-1])


def _no_slide(viewer) -> str:
    """Why no slide is open, and how to open one (also when another reader opened the file)."""
    elsewhere = next((layer for layer in viewer.layers if isinstance(layer, Image)
                      and str(layer.source.path or "").lower().endswith(EXTENSIONS)), None)
    if elsewhere is None:
        return "no slide open: open a slide file (svs, ndpi, tif) with File > Open first"
    return (f"no slide open: {elsewhere.name} was read by napari's own reader, which loads it whole and "
            "without its resolution; open it again with File > Open "
            f"(or viewer.open(path, plugin='{PLUGIN}'))")


def find_layers(viewer, role: str, root: Path | None = None) -> list[Layer]:
    """This plugin's layers of ``role`` (for the result folder ``root`` when given)."""
    found = [layer for layer in viewer.layers if layer.metadata.get(ROLE) == role]
    if root is not None:
        results = str(Path(root).resolve())
        found = [layer for layer in found if layer.metadata.get(RESULTS) == results]
    return found


def find_draft_layer(viewer, draft_id: str) -> Labels | None:
    drafts = find_layers(viewer, "draft")
    return next((layer for layer in drafts if layer.metadata.get(DRAFT_ID) == draft_id), None)


def add(viewer, layer_data: LayerData) -> Layer:
    """Add a layer from a (data, kwargs, type) tuple."""
    return viewer.add_layer(Layer.create(*layer_data))


def add_aside(viewer, layer_data: LayerData) -> Layer:
    """Add a layer without taking the selection from the layer the buttons act on."""
    active = viewer.layers.selection.active
    layer = add(viewer, layer_data)
    role = layer_data[1]["metadata"].get(ROLE)
    if role == "reviewed":
        _display_only(layer)
    elif role == IDLE_DRAFT:
        layer.editable = False  # no paint tools until a review takes it over
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def missing_review_layers(viewer, slide: SlideContext, root: Path) -> list[LayerData]:
    """The layers a review of the results in ``root`` would otherwise add while the user waits: the
    reviewed-regions layer (empty until a region is reviewed) and a put-aside draft layer, when not
    there yet. The class map is opened only when one is missing."""
    reviewed = not find_layers(viewer, "reviewed", root)
    draft = not find_layers(viewer, IDLE_DRAFT, root) and not find_layers(viewer, "draft", root)
    if not (reviewed or draft):
        return []
    cm = ClassMap.open(root)
    return ([reviewed_layer(cm, slide.frame, slide.path, slide.name)] if reviewed else []) + (
        [idle_draft_layer(cm, slide.frame, slide.path, slide.name)] if draft else [])


def show_draft(viewer, slide: SlideContext, draft: Draft) -> Labels:
    """The labels layer of ``draft``, hidden (the caller shows it, a turn of the event loop later):
    a put-aside draft layer of the same results taken over, else a new one. Its data is the draft's
    array, so every stroke lands on disk."""
    data, kwargs, kind = draft_layer(draft, slide.frame, slide.path, slide.name)
    aside = find_layers(viewer, IDLE_DRAFT, draft.classmap.root)
    if not aside:
        return add(viewer, (data, {**kwargs, "visible": False}, kind))
    layer = aside[0]
    if list(layer.features.get("class", [])) != kwargs["features"]["class"]:  # results made again
        layer.colormap, layer.features = kwargs["colormap"], kwargs["features"]
    layer.data = data  # napari makes the layer editable again
    layer.metadata = kwargs["metadata"]
    layer.name = kwargs["name"]
    if not np.allclose(layer.scale, kwargs["scale"]):
        layer.scale = kwargs["scale"]
    layer.translate = kwargs["translate"]
    return layer


def put_aside(viewer, layer: Labels) -> None:
    """Close a review's layer (its draft applied or discarded): hidden and kept, with a 1 x 1
    placeholder for data and no history, for the next review of its results to take over; removed
    when another is put aside already or its slide is no longer open."""
    if layer not in viewer.layers:
        return
    root = layer.metadata[RESULTS]
    slide = slide_of(viewer, layer)
    if slide is None or any(other is not layer for other in find_layers(viewer, IDLE_DRAFT, Path(root))):
        remove(viewer, layer)
        return
    layer.visible = False
    layer.data = np.zeros((1, 1), np.uint8)  # lets go of the draft's array (its files are gone)
    layer.editable = False  # no tools, and napari forgets the undo history of the closed review
    layer.metadata = {ROLE: IDLE_DRAFT, SLIDE_PATH: layer.metadata[SLIDE_PATH], RESULTS: root}
    layer.name = idle_draft_name(slide.name)
    if viewer.layers.selection.active is layer:
        viewer.layers.selection.active = slide.layer


def remove(viewer, layer: Layer) -> None:
    """Remove ``layer`` (if still shown) without freezing the viewer for a full garbage collection.

    napari runs ``gc.collect()`` after removing a layer (for Windows GL drivers), and with torch
    loaded that scans some 400,000 objects: 0.6-0.8 s on the main thread. Elsewhere the objects alive
    before are frozen for the removal, so that collection only looks at newer ones; the layer's own
    cycles go with Python's next automatic collection.
    """
    if layer not in viewer.layers:
        return
    if sys.platform == "win32" or gc.get_freeze_count():  # napari's fix is for Windows; a freeze is another's
        viewer.layers.remove(layer)
        return
    gc.freeze()
    try:
        viewer.layers.remove(layer)
    finally:
        gc.unfreeze()


def _opened(source: ClassMap | Path) -> ClassMap:
    """``source`` if it is a class map already opened (for reading), else the one in that folder."""
    return source if isinstance(source, ClassMap) else ClassMap.open(source)


def show_classmap(viewer, slide: SlideContext, source: ClassMap | Path) -> Labels:
    """The class-map layer of ``source`` (an opened class map or its result folder), added (or
    rebuilt when the map on disk changed shape)."""
    cm = _opened(source)
    for layer in find_layers(viewer, "classmap", cm.root):
        shapes = [tuple(level.shape) for level in (layer.data if layer.multiscale else [layer.data])]
        if shapes == [tuple(level.shape) for level in cm.levels]:
            return layer
        remove(viewer, layer)
    layer = add(viewer, classmap_layer(cm, slide.frame, slide.path, slide.name))
    viewer.layers.selection.active = slide.layer  # keep the slide the one the buttons act on
    return layer


def show_reviewed(viewer, slide: SlideContext, source: ClassMap | Path) -> Shapes | None:
    """Bring the reviewed-regions layer of ``source`` (an opened class map or its result folder)
    up to date with the class map's record.

    The layer only shows the record: it is never left the active layer, and it is not editable, so
    napari offers no tools to move or reshape its rectangles.
    """
    cm = _opened(source)
    rectangles = reviewed_rectangles(cm, slide.frame)
    layers = find_layers(viewer, "reviewed", cm.root)
    if layers:
        layer = layers[0]
        shown = [np.asarray(corners).tolist() for corners in layer.data]
        if shown != rectangles:
            width = reviewed_edge_width(cm, slide.frame)
            if shown == rectangles[:len(shown)]:  # regions added: napari makes only the new ones
                layer.add_rectangles(np.asarray(rectangles[len(shown):]), edge_width=width,
                                     edge_color=REVIEWED_EDGE, face_color="transparent")
            else:  # all made again: napari takes 0.1-0.3 s for it
                layer.current_edge_width = width
                layer.data = rectangles
                layer.shape_type = "rectangle"
    elif rectangles:
        layer = add(viewer, reviewed_layer(cm, slide.frame, slide.path, slide.name))
    else:
        return None
    _display_only(layer)
    if viewer.layers.selection.active == layer:  # napari selects what it adds (== : plugins get proxies)
        viewer.layers.selection.active = slide.layer
    return layer


def _display_only(layer: Shapes) -> None:
    """No move, select or draw tools for ``layer``; napari makes a shapes layer editable again when
    its data or the view changes, so it is locked again each time."""
    layer.mode = "pan_zoom"
    layer.editable = False
    layer.events.editable.connect(_stay_display_only)  # napari connects a callback once


def _stay_display_only(event) -> None:
    if event.source.editable:
        event.source.editable = False


def outline(layer: Labels, on: bool) -> None:
    """Show a class-map layer as class outlines (which read on H&E) or as filled classes."""
    layer.contour = OUTLINE_WIDTH if on else 0
    layer.opacity = OUTLINE_OPACITY if on else CLASSMAP_OPACITY


def show_scale_bar(viewer, slide: SlideContext) -> None:
    """Show napari's scale bar when the slide is placed in micrometres (its µm/px known); napari takes
    the bar's unit from the layers, so it reads in µm."""
    if slide.frame.units:
        viewer.canvas.overlays.scale_bar.visible = True


def frame_rectangle(viewer, corners: list[list[float]]) -> None:
    """Point the 2-D camera at a world rectangle, with a margin around it."""
    ys, xs = [c[0] for c in corners], [c[1] for c in corners]
    camera = viewer.scene.camera
    camera.center = ((min(ys) + max(ys)) / 2, (min(xs) + max(xs)) / 2)
    canvas_h, canvas_w = viewer.canvas.size
    camera.zoom = 0.8 * min(canvas_h / max(max(ys) - min(ys), 1e-9), canvas_w / max(max(xs) - min(xs), 1e-9))


def visible_box(viewer, slide: SlideContext) -> Box:
    """The level-0 box the canvas shows (2-D view only), not clipped to the slide."""
    if viewer.dims.ndisplay != 2:
        raise UserError("switch the viewer to 2-D to segment or review what it shows")
    camera = viewer.scene.camera
    canvas = tuple(viewer.canvas.size)
    return slide.frame.visible_box(tuple(camera.center[-2:]), camera.zoom, canvas)


def drawn_box(viewer, slide: SlideContext) -> Box | None:
    """The level-0 box of the rectangle(s) chosen in the active Shapes layer (not ours), if any:
    the selected shapes, else the last one drawn."""
    layer = viewer.layers.selection.active
    if not isinstance(layer, Shapes) or layer.metadata.get(ROLE) or not len(layer.data):
        return None
    chosen = sorted(layer.selected_data) or [len(layer.data) - 1]
    corners = [layer.data_to_world(point)[-2:] for i in chosen for point in layer.data[i]]
    ys, xs = [c[0] for c in corners], [c[1] for c in corners]
    return slide.frame.world_rect_to_box(min(ys), min(xs), max(ys), max(xs))
