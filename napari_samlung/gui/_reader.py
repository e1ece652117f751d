"""napari reader: a whole-slide image as a lazy multiscale RGB layer, plus its saved results;
results on their own and this project's label TIFFs as labels layers.

Opening reads only the file's structure (see ``napari_samlung.slide``), so a 50,000 px slide
opens as fast as a small one; napari then reads just the tiles it draws. When the slide already
has results (a class map in the remembered project folder or beside the slide), they come back
as a labels layer and a reviewed-regions layer. A results folder (``<slide>.samlung/``) or its
``classmap.zarr`` opens as those layers without the slide, and a label TIFF this project wrote
(known by its description) as a multiscale labels layer with class names, both in micrometres
where the slide's are known and placed where they lie over the slide. Anything else gives None,
so napari tries its other readers.

The first slide read here makes this plugin napari's reader for its slide patterns
(:func:`prefer_this_reader`), where the user has chosen no other: File > Open then opens slides
without asking each time which reader to use, and so does ``viewer.open(path, plugin=None)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from napari_samlung.annotations.label_tiff import LabelTiffInfo, read_label_tiff_info
from napari_samlung.geometry import SlideFrame
from napari_samlung.gui.layers import (CLASSMAP_OPACITY, LayerData, ShownLevel, features_table, label_colors,
                                       mpp_frame, results_layers, slide_frame, slide_layer)
from napari_samlung.labels import IGNORE
from napari_samlung.results.folders import find_results, slide_stem
from napari_samlung.gui.settings import load_settings
from napari_samlung.results.classmap import ClassMap, ClassMapError
from napari_samlung.slide import SlideError, open_slide
from napari_samlung.slide.formats import SLIDE_EXTENSIONS, SLIDE_PATTERNS, is_slide_candidate
from napari_samlung.slide.metadata import SlideMetadata, resolution_metadata

PLUGIN = "napari-samlung"
EXTENSIONS = SLIDE_EXTENSIONS  # .ome.tif(f) end in .tif(f); DICOM and OME-Zarr may be folders
PATTERNS = SLIDE_PATTERNS  # napari's preferred-reader keys


def get_reader(path: str | os.PathLike | list) -> Callable[[str], list[LayerData]] | None:
    """The reader function for ``path``, or None when it is not a slide, results or a label TIFF
    this plugin opens."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    root = results_root(path)
    if root is not None:
        return lambda _path: read_results(root)
    if not is_slide_candidate(path):
        return None
    info = label_tiff_info(path)
    if info is not None:
        return lambda _path: [label_tiff_layer(path, info)]
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


def results_root(path: str | os.PathLike) -> Path | None:
    """The result folder that ``path`` is (or whose ``classmap.zarr`` it is), when its class map
    opens; else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    root = path.parent if path.name == ClassMap.STORE else path
    try:
        ClassMap.open(root)
    except ClassMapError:
        return None
    return root


def read_results(root: Path) -> list[LayerData]:
    """The class map (and reviewed regions) of a result folder, without its slide: placed in
    micrometres where the slide's microns per pixel are recorded."""
    cm = ClassMap.open(root)
    slide = cm.meta.get("slide") or {}
    return results_layers(root, mpp_frame(slide.get("mpp")), slide.get("path") or root,
                          slide.get("name") or slide_stem(root))


def label_tiff_info(path: str | os.PathLike) -> LabelTiffInfo | None:
    """What the description of a label TIFF this project wrote says; None for any other file
    (slides included)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return read_label_tiff_info(tif)
    except Exception:  # not a TIFF, or a damaged one: the slide reader says what is wrong
        return None


def label_tiff_layer(path: str | os.PathLike, info: LabelTiffInfo) -> LayerData:
    """A label TIFF as a lazy multiscale labels layer with class names, placed over its slide."""
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)  # stays open: napari reads tiles from it while the layer is shown
    levels = [ShownLevel(zarr.open_array(tif.aszarr(level=k), mode="r")) for k in range(len(tif.series[0].levels))]
    mpp = resolution_metadata(tif.pages[0], SlideMetadata()).mpp  # this project writes them in OME-TIFFs too
    num_classes = max((v for v in info.class_names if v != IGNORE), default=0)
    kwargs = {
        "name": Path(path).name.split(".")[0],
        "multiscale": len(levels) > 1,
        "colormap": label_colors(num_classes),
        "features": features_table(info.class_names),
        "opacity": CLASSMAP_OPACITY,
        "metadata": {"samlung_label_tiff": str(Path(path).resolve())},
        **_label_placement(levels[0].shape, info, mpp),
    }
    return (levels if kwargs["multiscale"] else levels[0]), kwargs, "labels"


def _label_placement(shape: tuple[int, int], info: LabelTiffInfo, mpp: float | None) -> dict:
    """napari scale, translate (and units) of a label image of ``shape`` over its slide: each
    label pixel spans the slide's level-0 extent over the image's size (the description's scale
    where it does not give the slide's size); ``mpp``: microns per label pixel along x."""
    if info.slide_shape is not None:
        per_pixel = info.slide_shape[0] / shape[0], info.slide_shape[1] / shape[1]
    else:
        per_pixel = (info.scale or 1.0,) * 2
    frame = mpp_frame(mpp / per_pixel[1]) if mpp else SlideFrame()
    placed = {"scale": (frame.scale[0] * per_pixel[0], frame.scale[1] * per_pixel[1]),
              "translate": frame.to_world(per_pixel[0] / 2, per_pixel[1] / 2)}
    if frame.units:
        placed["units"] = frame.units
    return placed
