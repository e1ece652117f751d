"""napari writers for labels layers: pyramidal label TIFF and QuPath GeoJSON.

A SAM-Lung segmentation layer is written from its class map on disk (whole-slide sized, never
loaded whole; GeoJSON in level-0 slide pixels). A review draft is placed in the slide by its box.
Any other labels layer is written from its data (GeoJSON in the layer's pixel coordinates).
Both writers are atomic: a temporary file beside the target, then a rename.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_samlung.annotations.geojson import (
    MAX_TRACE_SIZE,
    classmap_to_geojson,
    labels_to_features,
)
from napari_samlung.annotations.errors import ExportError
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.files import write_json_atomic
from napari_samlung.gui.layers import DRAFT_BOX, RESULTS, ROLE
from napari_samlung.results.classmap import ClassMap
from napari_samlung.labels import IGNORE
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff


def _classmap_of(attributes: dict[str, Any]) -> ClassMap | None:
    metadata = attributes.get("metadata") or {}
    if metadata.get(ROLE) in ("classmap", "draft") and metadata.get(RESULTS):
        return ClassMap.open(metadata[RESULTS])
    return None


def _mpp(attributes: dict[str, Any]) -> float | None:
    """Microns per pixel of a layer placed in micrometres, else None."""
    units = [str(u) for u in attributes.get("units") or ()]
    scale = attributes.get("scale")
    if scale is not None and units and all(u in ("micrometer", "um", "µm") for u in units[-2:]):
        return float(scale[-1])
    return None


def write_label_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a labels layer as a tiled, zlib-compressed pyramidal TIFF."""
    metadata = attributes.get("metadata") or {}
    if metadata.get(ROLE) == "classmap":
        return [str(classmap_to_label_tiff(_classmap_of(attributes), path))]
    labels = data[0] if attributes.get("multiscale") else data
    if labels.ndim != 2:
        raise ExportError(f"{path}: only 2-D labels can be written as a label TIFF, "
                          f"the layer has {labels.ndim} dimensions")
    if labels.dtype not in (np.uint8, np.uint16):
        labels = np.asarray(labels)
        if labels.min(initial=0) < 0 or labels.max(initial=0) > np.iinfo(np.uint16).max:
            raise ExportError(f"{path}: label values must lie in 0..65535 for a label TIFF")
        labels = labels.astype(np.uint16)
    return [str(write_pyramidal_tiff(Path(path), labels, mpp=_mpp(attributes), compression="zlib",
                                     kind="labels"))]


def write_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write a labels layer as a QuPath GeoJSON FeatureCollection of class polygons."""
    metadata = attributes.get("metadata") or {}
    cm = _classmap_of(attributes)
    if metadata.get(ROLE) == "classmap":
        classmap_to_geojson(cm, path, reviewed_boxes=True)
        return [path]
    levels = list(data) if attributes.get("multiscale") else [data]
    k = next((i for i, level in enumerate(levels) if max(level.shape) <= MAX_TRACE_SIZE), None)
    if k is None:
        raise ExportError(f"{path}: the layer is larger than {MAX_TRACE_SIZE} px per side "
                          "and has no smaller level")
    labels = np.asarray(levels[k])
    if labels.ndim != 2:
        raise ExportError(f"{path}: only 2-D labels can be written as GeoJSON, "
                          f"the layer has {labels.ndim} dimensions")
    origin, pixel = (0.0, 0.0), levels[0].shape[0] / labels.shape[0]
    if cm is not None:  # a review draft: place it in level-0 slide pixels
        y, x = metadata[DRAFT_BOX][:2]
        origin, pixel = (y * cm.scale, x * cm.scale), pixel * cm.scale
    num_classes = cm.num_classes if cm is not None else int(labels[labels != IGNORE].max(initial=1))
    features = labels_to_features(labels, num_classes, origin=origin, pixel_size=pixel)
    write_json_atomic(path, {"type": "FeatureCollection", "features": features})
    return [path]

