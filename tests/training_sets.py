"""Builders of small training-data folders for the data, fine-tuning and predict tests."""

from __future__ import annotations

import json
from pathlib import Path

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F

from napari_samlung.data import files


def read_events(run_dir: Path) -> list[dict]:
    """The records a fine-tuning run wrote to ``run_dir/metrics.jsonl``, one dict per line, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_png(path, array)
    return path


def blob_pair(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic H&E-like tile: a purple 'tumor' disc on pink tissue, with noise; label 0/1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    radius = rng.uniform(0.15, 0.3) * size
    label = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2).astype(np.uint8)
    pink, purple = np.array([230, 150, 200]), np.array([120, 60, 160])
    image = np.where(label[..., None] == 1, purple, pink) + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_research_layout(root: Path, splits: dict[str, list[tuple[str, np.ndarray, np.ndarray]]]) -> Path:
    """``root/{split}/mask/<name>.png`` images and ``label/<name>.png`` 0/255 labels."""
    for split, pairs in splits.items():
        for name, image, label in pairs:
            write_png(root / split / "mask" / f"{name}.png", image)
            write_png(root / split / "label" / f"{name}.png", label.astype(np.uint8) * 255)
    return root


def synthetic_research_layout(root: Path, size: int = 64, train: int = 4, val: int = 2) -> Path:
    """A research layout of blob tiles: ``train`` training and ``val`` validation pairs."""
    return write_research_layout(root, {
        "train": [(f"t{i}", *blob_pair(size, i)) for i in range(train)],
        "val": [(f"v{i}", *blob_pair(size, 100 + i)) for i in range(val)],
    })


def write_export_set(
    root: Path,
    tiles: list[tuple[str, np.ndarray, np.ndarray, str | None]],
    num_classes: int = 1,
    mpp: float | None = 0.5,
    **overrides,
) -> Path:
    """An exported correction set: ``images/``, ``labels/`` (class values, 255 ignored) and the manifest."""
    entries = []
    for name, image, label, split in tiles:
        write_png(root / "images" / f"{name}.png", image)
        write_png(root / "labels" / f"{name}.png", label)
        entry = {"image": f"images/{name}.png", "label": f"labels/{name}.png", "slide": "slide.svs",
                 "level": 0, "x": 0, "y": 0, "width": image.shape[1], "height": image.shape[0],
                 "region": "r1"}
        if split is not None:
            entry["split"] = split
        entries.append(entry)
    manifest = {"format": "samlung-training-set", "version": 1, "num_classes": num_classes,
                "class_names": {"0": "Background", "1": "Tumor"}, "ignore_index": 255, "mpp": mpp,
                "tile_size": tiles[0][1].shape[0] if tiles else None, "created": "2026-01-01T00:00:00",
                "tiles": entries, **overrides}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def ocdc_pairs(ocdc_dir: Path, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The OCDC tiles resized to ``size`` (antialiased) with their masks (> 127 is tumor)."""
    pairs = {}
    for image_path in sorted((ocdc_dir / "images").glob("*.jpg")):
        image = imagecodecs.imread(image_path)
        mask = imagecodecs.imread(ocdc_dir / "masks" / image_path.name)
        mask = mask[..., 0] if mask.ndim == 3 else mask
        small = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(size, size),
                              mode="bilinear", antialias=True)
        small_mask = F.interpolate(torch.from_numpy((mask > 127).astype(np.float32))[None, None],
                                   size=(size, size), mode="area")
        pairs[image_path.stem] = (
            small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy(),
            (small_mask[0, 0].numpy() > 0.5).astype(np.uint8),
        )
    return pairs
