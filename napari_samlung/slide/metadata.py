"""Microns per pixel and other slide properties from TIFF metadata.

Sources, in the order a format uses them: the Aperio ImageDescription (``MPP = 0.499``), OME-XML
(``PhysicalSizeX`` with its unit), and the TIFF resolution tags when their unit is the centimetre
(NDPI and many scanners write those; inch resolutions are almost always a screen default such as
72 dpi and say nothing about the microscope). ``AppMag`` is the objective, not a pixel size.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

# Microns per pixel outside this range are a placeholder, not a microscope's.
PLAUSIBLE_MPP = (0.01, 1000.0)

_OME_UNITS_IN_UM = {
    "pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
    "Å": 1e-4, "\u212b": 1e-4, "in": 25400.0,
}


@dataclass
class SlideMetadata:
    """What a format's metadata says about the slide."""

    mpp: float | None = None
    mpp_source: str | None = None  # 'aperio', 'ome', 'tiff-resolution'
    magnification: float | None = None
    properties: dict[str, str] = field(default_factory=dict)


def plausible_mpp(value: float | None) -> float | None:
    """``value`` if it is a finite pixel size in the plausible range, else None."""
    if value is None or not math.isfinite(value):
        return None
    return value if PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1] else None


def parse_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def aperio_properties(description: str) -> dict[str, str]:
    """The ``key = value`` fields of an Aperio ImageDescription (after the first ``|``)."""
    props = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def aperio_metadata(description: str) -> SlideMetadata:
    props = aperio_properties(description)
    meta = SlideMetadata(properties={f"aperio.{k}": v for k, v in props.items()})
    meta.mpp = plausible_mpp(parse_float(props.get("MPP")))
    meta.mpp_source = "aperio" if meta.mpp else None
    meta.magnification = parse_float(props.get("AppMag"))
    return meta


def ome_metadata(xml: str, image_index: int = 0) -> SlideMetadata:
    """Pixel size and objective of the ``image_index``-th OME Image."""
    meta = SlideMetadata()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return meta
    images = [el for el in root if _local(el.tag) == "Image"]
    if not images:
        return meta
    image = images[min(image_index, len(images) - 1)]
    pixels = next((el for el in image if _local(el.tag) == "Pixels"), None)
    if pixels is not None:
        size = parse_float(pixels.get("PhysicalSizeX"))
        unit = pixels.get("PhysicalSizeXUnit", "µm")
        factor = _OME_UNITS_IN_UM.get(unit)
        if size is not None and factor is not None:
            meta.mpp = plausible_mpp(size * factor)
            meta.mpp_source = "ome" if meta.mpp else None
        for key in ("PhysicalSizeX", "PhysicalSizeXUnit", "PhysicalSizeY", "PhysicalSizeYUnit"):
            if pixels.get(key) is not None:
                meta.properties[f"ome.{key}"] = pixels.get(key)
    objective = next((el for el in root.iter() if _local(el.tag) == "Objective"), None)
    if objective is not None:
        meta.magnification = parse_float(objective.get("NominalMagnification"))
    return meta


def resolution_mpp(page) -> float | None:
    """Microns per pixel from XResolution when ResolutionUnit is the centimetre, else None."""
    unit = page.tags.valueof(296)  # ResolutionUnit: 3 = centimetre
    xres = page.tags.valueof(282)
    if unit != 3 or not xres:
        return None
    numerator, denominator = xres if isinstance(xres, tuple) else (xres, 1)
    if not numerator or not denominator:
        return None
    return plausible_mpp(1e4 * denominator / numerator)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
