"""Label conventions, in one place.

Class maps, review layers, exports and training data all use these values.
"""

from __future__ import annotations

BACKGROUND = 0
TUMOR = 1  # the class in the binary (num_classes=1) setting
IGNORE = 255  # not reviewed / not to be learned from

#: Names of the classes of a binary model, by label value.
BINARY_CLASS_NAMES = {BACKGROUND: "Background", TUMOR: "Tumor"}

#: RGB colors for classes (QuPath and napari display); class 1 is tumor red.
CLASS_COLORS = {
    1: (200, 0, 0),
    2: (0, 120, 200),
    3: (0, 160, 60),
    4: (230, 160, 0),
    5: (150, 0, 180),
}


def class_name(value: int, num_classes: int = 1) -> str:
    """Human name of a label value (``Tumor`` for 1 in the binary setting, ``Class k`` otherwise)."""
    if value == IGNORE:
        return "Not reviewed"  # no person has labelled it: ignored in training and scoring
    if num_classes == 1 and value in BINARY_CLASS_NAMES:
        return BINARY_CLASS_NAMES[value]
    return "Background" if value == BACKGROUND else f"Class {value}"


def class_color(value: int) -> tuple[int, int, int]:
    """RGB color of a class value; cycles for more classes than listed."""
    if value in CLASS_COLORS:
        return CLASS_COLORS[value]
    keys = sorted(CLASS_COLORS)
    return CLASS_COLORS[keys[(value - 1) % len(keys)]]
