"""Microns per pixel and other slide properties from the slide's metadata.

Sources, in the order a format uses them: the Aperio ImageDescription (``MPP = 0.499``), OME-XML
(``PhysicalSizeX`` with its unit), and the TIFF resolution tags (centimetre or inch; NDPI and many
scanners write those). ``AppMag`` is the objective, not a pixel size. Slides read through
OpenSlide carry ``openslide.mpp-x``; OME-Zarr images a scale with a unit per axis.

A value is trusted only when a microscope could have made it (:data:`PLAUSIBLE_MPP`) and it is not
a screen or print density (72, 96, 150, 300 or 600 dpi, in either unit: image editors write those
whatever the picture shows). Otherwise the microns per pixel are unknown, and
:attr:`SlideMetadata.mpp_note` says why, so the user can give the real value.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

# Microns per pixel outside this range are a placeholder, not a microscope's.
PLAUSIBLE_MPP = (0.05, 20.0)
# Densities that screens and print software write by default, in dots per inch.
DEVICE_DPI = (72, 96, 150, 300, 600)
_UM_PER_INCH = 25400.0

_OME_UNITS_IN_UM = {
    "pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
    "Å": 1e-4, "\u212b": 1e-4, "in": 25400.0,
}
# OME-Zarr (NGFF) axis units of length, as UDUNITS-2 names.
NGFF_UNITS_IN_UM = {
    "angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3,
    "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6, "inch": 25400.0, "foot": 304800.0,
}


@dataclass
class SlideMetadata:
    """What a format's metadata says about the slide."""

    mpp: float | None = None
    mpp_source: str | None = None  # 'aperio', 'ome', 'tiff-resolution', 'openslide', 'ome-zarr'
    mpp_note: str | None = None  # why the file's value was not taken, when it has one
    magnification: float | None = None
    properties: dict[str, str] = field(default_factory=dict)


def implausible(value: float | None) -> str | None:
    """Why ``value`` (microns per pixel) cannot be a microscope's, or None when it can."""
    if value is None or not math.isfinite(value):
        return "not a number"
    low, high = PLAUSIBLE_MPP
    if low <= value <= high:
        return None
    return f"{value:.4g} um/px is outside {low:g}-{high:g} um/px, the range of microscopes"


def device_density(mpp: float) -> int | None:
    """The screen or print density (dpi) that ``mpp`` equals, within rounding, or None."""
    dpi = _UM_PER_INCH / mpp
    return next((d for d in DEVICE_DPI if abs(dpi - d) <= 0.01 * d), None)


def _checked(meta: SlideMetadata, value: float | None, source: str, what: str) -> SlideMetadata:
    if value is None:
        return meta
    problem = implausible(value)
    if problem is None:
        meta.mpp, meta.mpp_source = value, source
    else:
        meta.mpp_note = f"{what} ({problem}) ignored"
    return meta


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
    _checked(meta, parse_float(props.get("MPP")), "aperio", "the Aperio MPP")
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
            _checked(meta, size * factor, "ome", "the OME PhysicalSizeX")
        for key in ("PhysicalSizeX", "PhysicalSizeXUnit", "PhysicalSizeY", "PhysicalSizeYUnit"):
            if pixels.get(key) is not None:
                meta.properties[f"ome.{key}"] = pixels.get(key)
    objective = next((el for el in root.iter() if _local(el.tag) == "Objective"), None)
    if objective is not None:
        meta.magnification = parse_float(objective.get("NominalMagnification"))
    return meta


def openslide_metadata(properties: Mapping[str, str]) -> SlideMetadata:
    """Pixel size (``openslide.mpp-x``) and objective of a slide OpenSlide opened; all its
    properties kept."""
    meta = SlideMetadata(properties=dict(properties))
    _checked(meta, parse_float(properties.get("openslide.mpp-x")), "openslide", "OpenSlide's mpp-x")
    meta.magnification = parse_float(properties.get("openslide.objective-power"))
    return meta


def ngff_metadata(scale: float | None, unit: str | None) -> SlideMetadata:
    """Pixel size from an OME-Zarr x-axis scale and unit; an unknown or missing unit leaves the
    microns per pixel unknown, with a note saying why."""
    meta = SlideMetadata()
    if scale is None:
        meta.mpp_note = "the OME-Zarr metadata gives no scale for the x axis"
        return meta
    meta.properties["ome-zarr.x-scale"] = f"{scale:g}"
    if unit:
        meta.properties["ome-zarr.x-unit"] = unit
    factor = NGFF_UNITS_IN_UM.get(unit or "")
    if factor is None:
        meta.mpp_note = (f"the OME-Zarr x axis has {f'unit {unit!r}' if unit else 'no unit'}, "
                         "so its scale is not a length in micrometres")
        return meta
    return _checked(meta, scale * factor, "ome-zarr", "the OME-Zarr scale")


def resolution_metadata(page, meta: SlideMetadata) -> SlideMetadata:
    """Fill ``meta.mpp`` from XResolution (centimetre or inch), unless it is a device density."""
    unit = page.tags.valueof(296)  # ResolutionUnit: 2 = inch, 3 = centimetre
    xres = page.tags.valueof(282)
    if unit not in (2, 3) or not xres:
        return meta
    numerator, denominator = xres if isinstance(xres, tuple) else (xres, 1)
    if not numerator or not denominator:
        return meta
    mpp = (1e4 if unit == 3 else _UM_PER_INCH) * denominator / numerator
    dpi = device_density(mpp)
    if dpi is not None:
        per = "px/cm" if unit == 3 else "dpi"
        meta.mpp_note = (f"the resolution tags say {numerator / denominator:.4g} {per} ({dpi} dpi), "
                         "a screen or print density, not a microscope's; ignored")
        return meta
    return _checked(meta, mpp, "tiff-resolution", "the TIFF resolution tags")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]
