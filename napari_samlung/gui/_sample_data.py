"""napari sample data: the synthetic H&E demo slide (built from scikit-image's bundled image).

The slide is generated once into the user's cache folder (``SAMLUNG_CACHE_DIR`` overrides it)
and then opened like any slide, so segmenting it writes results next to it as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_samlung.gui._reader import read_slide
from napari_samlung.gui.layers import LayerData
from napari_samlung.synthetic import write_demo_slide
from napari_samlung.slide import open_slide

ENV_VAR = "SAMLUNG_CACHE_DIR"
DEMO_NAME = "samlung-demo-slide.svs"
DEMO_SHAPE = (3072, 3072)


def cache_dir() -> Path:
    folder = os.environ.get(ENV_VAR)
    if not folder:
        from platformdirs import user_cache_dir

        folder = user_cache_dir("napari-samlung", appauthor=False)
    return Path(folder)


def demo_slide_path() -> Path:
    """The demo slide file, written on first use (atomically, so a crash leaves none)."""
    path = cache_dir() / DEMO_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_demo_slide(path, DEMO_SHAPE, mpp=0.5)
    return path


def demo_slide() -> list[LayerData]:
    """Layer data of the demo slide (and of its results, once segmented)."""
    return read_slide(open_slide(demo_slide_path()))
