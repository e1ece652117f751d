"""The training Dataset and its augmentations: shapes, alignment of image and label, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from napari_samlung.data import AugmentConfig, EpochKeys, SegmentationDataset, discover_training_data
from napari_samlung.data.augment import PAD_VALUE, color_jitter, crop_or_pad, flip_rotate, pad_to_multiple
from napari_samlung.labels import IGNORE
from training_sets import synthetic_research_layout


def coded_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the pixel index, and a label equal to it mod 200,
    so any misalignment between image and label after a transform shows."""
    index = np.arange(height * width).reshape(height, width)
    image = np.stack([index % 200, index // 200, np.zeros_like(index)], axis=-1).astype(np.uint8)
    return image, (index % 200).astype(np.uint8)


def test_crop_or_pad_pads_with_white_and_ignore():
    image, label = coded_pair(10, 30)
    out_image, out_label = crop_or_pad(image, label, 16, np.random.default_rng(0))
    assert out_image.shape == (16, 16, 3) and out_label.shape == (16, 16)
    padded_rows = (out_label == IGNORE).all(axis=1)
    assert padded_rows.sum() == 6  # 10 real rows, 6 padded ones
    assert (out_image[padded_rows] == PAD_VALUE).all()
    real = ~padded_rows
    np.testing.assert_array_equal(out_image[real][..., 0], out_label[real])


def test_centre_crop_without_rng_is_deterministic():
    image, label = coded_pair(40, 40)
    a = crop_or_pad(image, label, 16)
    b = crop_or_pad(image, label, 16)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[1], label[12:28, 12:28])


def test_flips_and_rotations_keep_image_and_label_aligned():
    image, label = coded_pair(12, 12)
    seen = set()
    for seed in range(40):
        out_image, out_label = flip_rotate(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image[..., 0], out_label)
        seen.add(out_label.tobytes())
    assert len(seen) == 8  # all eight symmetries of the square show up


def test_non_square_images_only_turn_by_180_degrees():
    image, label = coded_pair(8, 12)
    for seed in range(20):
        out_image, out_label = flip_rotate(image, label, np.random.default_rng(seed))
        assert out_label.shape == (8, 12)
        np.testing.assert_array_equal(out_image[..., 0], out_label)


def test_color_jitter_is_light_and_keeps_shape():
    image = np.random.default_rng(0).integers(40, 215, (16, 16, 3)).astype(np.uint8)
    out = color_jitter(image, np.random.default_rng(1), 0.1, 0.1, 0.1)
    assert out.shape == image.shape and out.dtype == np.uint8
    difference = np.abs(out.astype(int) - image.astype(int))
    assert 0 < difference.mean() < 0.25 * 255
    np.testing.assert_array_equal(color_jitter(image, np.random.default_rng(1), 0, 0, 0), image)


def test_pad_to_multiple_pads_bottom_and_right():
    image, label = coded_pair(17, 32)
    out_image, out_label = pad_to_multiple(image, label, 16)
    assert out_label.shape == (32, 32)
    assert (out_label[17:] == IGNORE).all() and (out_image[17:] == PAD_VALUE).all()
    np.testing.assert_array_equal(out_label[:17], label)


@pytest.fixture
def pairs(tmp_path):
    data = discover_training_data([synthetic_research_layout(tmp_path / "DATA", size=40, train=4, val=1)])
    return data.train


def test_dataset_yields_uint8_hwc_images_and_class_maps(pairs):
    dataset = SegmentationDataset(pairs, num_classes=1, crop_size=32, augment=AugmentConfig(), seed=3)
    image, label = dataset[(0, 0)]
    assert image.dtype == torch.uint8 and image.shape == (32, 32, 3)
    assert label.dtype == torch.uint8 and label.shape == (32, 32)
    assert set(label.unique().tolist()) <= {0, 1, IGNORE}


def test_augmentation_is_fixed_by_seed_epoch_and_index(pairs):
    dataset = SegmentationDataset(pairs, num_classes=1, crop_size=32, augment=AugmentConfig(), seed=3)
    first = dataset[(1, 5)]
    assert all(torch.equal(a, b) for a, b in zip(first, dataset[(1, 5)]))
    assert not torch.equal(first[0], dataset[(1, 6)][0])
    other_seed = SegmentationDataset(pairs, num_classes=1, crop_size=32, augment=AugmentConfig(), seed=4)
    assert not torch.equal(first[0], other_seed[(1, 5)][0])


def test_dataset_without_crop_pads_to_a_multiple(pairs):
    image, label = SegmentationDataset(pairs, num_classes=1, pad_multiple=16)[0]
    assert image.shape == (48, 48, 3) and (label[40:] == IGNORE).all()
    assert SegmentationDataset(pairs, num_classes=1)[0][0].shape == (40, 40, 3)


def test_epoch_keys_reach_the_sampler_and_the_samples(pairs):
    dataset = SegmentationDataset(pairs, num_classes=1, crop_size=32, augment=AugmentConfig(), seed=0)
    sampler = EpochKeys(DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=0))
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    sampler.set_epoch(3)
    keys = list(sampler)
    assert len(keys) == 2 and all(epoch == 3 for _, epoch in keys)
    (images, labels), = list(loader)
    assert images.shape == (2, 32, 32, 3) and labels.shape == (2, 32, 32)
    assert torch.equal(images[0], dataset[keys[0]][0])
