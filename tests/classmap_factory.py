"""Small class maps with known labels, for the annotation and export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_samlung.results.classmap import ClassMap


def make_classmap(
    root: Path,
    labels: np.ndarray,
    *,
    scale: float = 2.0,
    num_classes: int = 1,
    slide_mpp: float | None = 0.25,
    tile: int = 64,
    slide_path: str = "/data/slide-A.svs",
    slide_shape: tuple[int, int] | None = None,
) -> ClassMap:
    """A class map at ``root`` holding ``labels`` (written through the pyramid)."""
    if slide_shape is None:
        slide_shape = (round(labels.shape[0] * scale), round(labels.shape[1] * scale))
    slide = {"path": slide_path, "name": Path(slide_path).stem, "format": "pyramidal-tiff",
             "shape": list(slide_shape), "mpp": slide_mpp}
    model = {"preset": "tiny", "mpp": None if slide_mpp is None else slide_mpp * scale, "tile": tile,
             "num_classes": num_classes}
    cm = ClassMap.create(root, labels.shape, scale=scale, num_classes=num_classes, slide=slide, model=model)
    cm.write((0, 0, *labels.shape), labels.astype(np.uint8))
    cm.update_meta(status="complete")
    return cm


def square_with_hole(shape: tuple[int, int] = (120, 160)) -> np.ndarray:
    """Tumor (1) square at rows 20:80, cols 30:110 with a background hole at rows 40:60, cols 50:70."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[20:80, 30:110] = 1
    labels[40:60, 50:70] = 0
    return labels
