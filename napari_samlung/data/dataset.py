"""The torch Dataset over image/label pairs, and the sampler that gives each sample its seed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from napari_samlung.data.augment import AugmentConfig, crop_or_pad, pad_to_multiple
from napari_samlung.data.augment import augment as apply_augment
from napari_samlung.data.layouts import Pair
from napari_samlung.data.pairs import load_pair


class SegmentationDataset(Dataset):
    """Pairs as ``(image, label)``: a uint8 (H, W, 3) tensor and a uint8 (H, W) class map.

    Images stay uint8 until they reach the device (a quarter of the bytes to copy); the model's
    ``normalize`` turns the (B, H, W, 3) batch into its channels-last input. With ``crop_size``
    every sample is cut (or padded) to that square, otherwise padded to a multiple of
    ``pad_multiple`` if given; with ``augment`` it is augmented. Random choices come from a
    generator seeded by (seed, epoch, index), so a key ``(index, epoch)`` from
    :class:`EpochKeys` gives the same sample in any worker, process or resumed run; a plain int
    index means epoch 0.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        num_classes: int,
        crop_size: int | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        pad_multiple: int | None = None,
    ) -> None:
        if any(pair.label is None for pair in pairs):
            raise ValueError("SegmentationDataset needs labelled pairs")
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.augment = augment
        self.seed = seed
        self.pad_multiple = pad_multiple

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, label = load_pair(self.pairs[index], self.num_classes)
        random = self.augment is not None
        rng = np.random.default_rng([self.seed, epoch, index]) if random else None
        if self.crop_size is not None:
            image, label = crop_or_pad(image, label, self.crop_size, rng)
        elif self.pad_multiple is not None:
            image, label = pad_to_multiple(image, label, self.pad_multiple)
        if rng is not None:
            image, label = apply_augment(image, label, rng, self.augment)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))


class EpochKeys(Sampler):
    """Wraps an index sampler to yield ``(index, epoch)`` keys; ``set_epoch`` reaches both."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((int(index), self.epoch) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
