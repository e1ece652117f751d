"""Whole-slide images: lazy pyramid levels, microns per pixel, fast region reads, tissue masks.

Headless (no napari or Qt): the engine, the command line and the napari reader share it.
"""

from __future__ import annotations

from .errors import SlideError
from .reader import LevelView, Slide, open_slide
from .tissue import TissueMask, TissueParams, tissue_mask

__all__ = ["LevelView", "Slide", "SlideError", "TissueMask", "TissueParams", "open_slide", "tissue_mask"]
