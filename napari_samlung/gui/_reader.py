"""napari reader: a whole-slide image as a lazy multiscale RGB layer, plus its saved results.

Opening reads only the file's structure (see ``napari_samlung.slide``), so a 50,000 px slide
opens as fast as a small one; napari then reads just the tiles it draws. When the slide already
has results (a class map in the remembered project folder or beside the slide), they come back
as a labels layer and a reviewed-regions layer. Files the slide module cannot open give None, so
napari tries its other readers.

The first slide read here makes this plugin napari's reader for its slide patterns
(:func:`prefer_this_reader`), where the user has chosen no other: File > Open then opens slides
without asking each time which reader to use, and so does ``viewer.open(path, plugin=None)``.
"""

from __future__ import annotations

import os
from typing import Callable

from napari_samlung.gui.layers import LayerData, results_layers, slide_frame, slide_layer
from napari_samlung.results.folders import find_results
from napari_samlung.gui.settings import load_settings
from napari_samlung.results.classmap import ClassMapError
from napari_samlung.slide import SlideError, open_slide

PLUGIN = "napari-samlung"
EXTENSIONS = (".svs", ".ndpi", ".tif", ".tiff")  # .ome.tif(f) end in .tif(f)
PATTERNS = tuple(f"*{extension}" for extension in EXTENSIONS)  # napari's preferred-reader keys


def get_reader(path: str | os.PathLike | list) -> Callable[[str], list[LayerData]] | None:
    """The reader function for ``path``, or None when it is not a slide this plugin opens."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not str(path).lower().endswith(EXTENSIONS):
        return None
    try:
        slide = open_slide(path)
    except SlideError:
        return None
    prefer_this_reader()
    return lambda _path: read_slide(slide)


def prefer_this_reader() -> dict[str, str]:
    """Make this plugin napari's preferred reader for the slide patterns the user has given no reader
    (napari's setting ``plugins.extension2reader``, also under Preferences > Plugins); returns the
    patterns set now."""
    from napari.settings import get_settings  # napari only where napari calls the reader

    plugins = get_settings().plugins
    chosen = plugins.extension2reader
    added = {pattern: PLUGIN for pattern in PATTERNS if pattern not in chosen}
    if added:
        plugins.extension2reader = {**chosen, **added}
    return added


def read_slide(slide) -> list[LayerData]:
    """Layer data for an opened slide and the results saved for it (the slide stays open: napari
    reads its tiles while it is shown)."""
    layers = [slide_layer(slide)]
    root = find_results(slide.path, load_settings().project_dir or None)
    if root is not None:
        try:
            layers += results_layers(root, slide_frame(slide), slide.path, slide.name)
        except ClassMapError:
            pass  # a damaged result folder must not stop the slide from opening; the widget reports it
    return layers
