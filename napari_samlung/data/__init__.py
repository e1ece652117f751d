"""Training and evaluation data: the research layout and exported correction sets.

Headless (numpy/torch only); used by ``samlung-finetune`` and ``samlung predict``.
"""

from napari_samlung.data.augment import AugmentConfig
from napari_samlung.data.files import DataError, read_gray, read_rgb, write_png
from napari_samlung.data.layouts import (
    Pair,
    TrainingData,
    discover_training_data,
    prediction_inputs,
    read_export_set,
)
from napari_samlung.data.pairs import check_pairs, load_pair



def __getattr__(name: str):
    """``SegmentationDataset`` and ``EpochKeys`` import torch: only when asked for, so the exports
    and the napari widget load this package without it."""
    if name in ("EpochKeys", "SegmentationDataset"):
        from napari_samlung.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AugmentConfig",
    "DataError",
    "EpochKeys",
    "Pair",
    "SegmentationDataset",
    "TrainingData",
    "check_pairs",
    "discover_training_data",
    "load_pair",
    "prediction_inputs",
    "read_export_set",
    "read_gray",
    "read_rgb",
    "write_png",
]
