"""Finding and updating this plugin's layers in a napari viewer (napari only; no Qt widgets).

Layers are tied together by the metadata keys of :mod:`napari_samlung.gui.layers`, so these
helpers find a slide's class-map, reviewed-regions and draft layers whoever added them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from napari.layers import Image, Labels, Layer, Shapes

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box, SlideFrame
from napari_samlung.gui.layers import (
    DRAFT_ID,
    RESULTS,
    ROLE,
    SLIDE_PATH,
    LayerData,
    classmap_layer,
    reviewed_layer,
    reviewed_rectangles,
)
from napari_samlung.results.classmap import ClassMap


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
        raise UserError("no slide open: open a slide file (svs, ndpi, tif) with File > Open first")
    return SlideContext.of(slides[-1])


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
        viewer.layers.remove(layer)
    layer = add(viewer, classmap_layer(cm, slide.frame, slide.path, slide.name))
    viewer.layers.selection.active = slide.layer  # keep the slide the one the buttons act on
    return layer


def show_reviewed(viewer, slide: SlideContext, source: ClassMap | Path) -> Shapes | None:
    """Bring the reviewed-regions layer of ``source`` (an opened class map or its result folder)
    up to date with the class map's record."""
    cm = _opened(source)
    layers = find_layers(viewer, "reviewed", cm.root)
    if layers:
        layer = layers[0]
        layer.data = reviewed_rectangles(cm, slide.frame)
        layer.shape_type = "rectangle"
        return layer
    if not cm.reviewed:
        return None
    return add(viewer, reviewed_layer(cm, slide.frame, slide.path, slide.name))


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
