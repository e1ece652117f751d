"""The confidence layer of a slide's results in the viewer (napari only; no Qt widgets).

Added hidden when results open or a run ends (the user turns it on in the layer list), kept when
it fits the confidence map on disk, rebuilt when the map changed shape, and left out for results
made before confidence maps were kept.
"""

from __future__ import annotations

from napari.layers import Image

from napari_samlung.gui._viewer import SlideContext, add, find_layers, remove
from napari_samlung.gui.layers import confidence_layer
from napari_samlung.results.classmap import ClassMap, ClassMapError
from napari_samlung.results.confidence import ConfidenceMap


def show_confidence(viewer, slide: SlideContext, cm: ClassMap) -> Image | None:
    """The confidence layer of ``cm``'s results, added (hidden) or redrawn; None when it has none."""
    try:
        confidence = ConfidenceMap.open_for(cm)
    except ClassMapError:
        return None
    shapes = [tuple(level.shape) for level in confidence.levels]
    for layer in find_layers(viewer, "confidence", cm.root):
        if [tuple(level.shape) for level in (layer.data if layer.multiscale else [layer.data])] == shapes:
            layer.refresh()
            return layer
        remove(viewer, layer)
    active = viewer.layers.selection.active
    layer = add(viewer, confidence_layer(confidence, cm, slide.frame, slide.path, slide.name))
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active  # keep the layer the buttons act on
    return layer
