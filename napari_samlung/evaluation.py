"""Score a predictor on labelled images: what ``samlung predict`` and ``--test-only`` report.

Each image is predicted whole (:mod:`napari_samlung.inference.images`), cleaned up with the
research code's morphological open/close, and scored against its label (Dice, IoU, pixel
accuracy, HD95; see :mod:`napari_samlung.metrics`). Results go to ``metrics.tsv`` (one row per
image, then a ``# mean`` line) and ``summary.json``; predicted masks optionally to PNG files.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from napari_samlung.data.files import write_png
from napari_samlung.errors import SamLungError
from napari_samlung.data.layouts import Pair
from napari_samlung.data.pairs import load_pair
from napari_samlung.files import write_atomic, write_json_atomic
from napari_samlung.inference.images import MAX_SIZE, predict_labels
from napari_samlung.inference.postprocess import morphological_cleanup
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.metrics import METRIC_KEYS, ImageMetrics, image_metrics, mean_metrics


class PredictError(SamLungError):
    """Bad settings for predicting and scoring tiles; the message names the setting."""


@dataclass(frozen=True)
class Postprocess:
    """Morphological open + close of each class (the research code: 15x15 kernel, 5 times)."""

    enabled: bool = True
    kernel_size: int = 15
    iterations: int = 5

    def __post_init__(self) -> None:
        if self.kernel_size < 1:
            raise PredictError(f"{{opt:kernel_size}} must be >= 1, got {self.kernel_size}")
        if self.iterations < 0:
            raise PredictError(f"{{opt:iterations}} must be >= 0, got {self.iterations}")

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return labels
        return morphological_cleanup(labels, self.kernel_size, self.iterations)


@dataclass(frozen=True)
class ImageResult:
    """One evaluated image: its name and metrics (None when it has no label)."""

    name: str
    metrics: ImageMetrics | None


def _load_ahead(
    pairs: Sequence[Pair], num_classes: int, workers: int, ahead: int
) -> Iterator[tuple[Pair, np.ndarray, np.ndarray | None]]:
    """Decode pairs in threads, at most ``ahead`` beyond the one handed out."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for pair in pairs:
            pending.append((pair, pool.submit(load_pair, pair, num_classes)))
            if len(pending) > ahead:
                done, future = pending.popleft()
                yield done, *future.result()
        while pending:
            done, future = pending.popleft()
            yield done, *future.result()


def _same_shape_batches(loaded: Iterable[tuple], batch_size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for item in loaded:
        if batch and (len(batch) == batch_size or item[1].shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def mask_image(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """What a saved mask holds: 0/255 for a binary model, class values otherwise."""
    return labels * np.uint8(255) if num_classes == 1 else labels


def evaluate_pairs(
    predictor: TilePredictor,
    pairs: Sequence[Pair],
    *,
    batch_size: int = 1,
    postprocess: Postprocess = Postprocess(),
    masks_dir: Path | None = None,
    max_size: int = MAX_SIZE,
    workers: int = 2,
) -> Iterator[ImageResult]:
    """Predict, clean up and score each pair (a generator: one result per image, in order).

    Images of equal size are batched up to ``batch_size``; files are decoded in threads ahead
    of the model. With ``masks_dir`` the cleaned predictions are written there as PNG.
    """
    num_classes = predictor.num_classes
    loaded = _load_ahead(pairs, num_classes, workers, ahead=2 * batch_size)
    for batch in _same_shape_batches(loaded, batch_size):
        images = torch.from_numpy(np.stack([image for _, image, _ in batch]))
        predicted = predict_labels(predictor, images, max_size).cpu().numpy()
        for (pair, _, label), labels in zip(batch, predicted):
            labels = postprocess(labels)
            if masks_dir is not None:
                write_png(masks_dir / f"{pair.name}.png", mask_image(labels, num_classes))
            metrics = None if label is None else image_metrics(labels, label, num_classes)
            yield ImageResult(pair.name, metrics)


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def write_results(out_dir: Path, results: Sequence[ImageResult]) -> dict[str, float | int]:
    """Write ``metrics.tsv`` (per image, then a ``# mean`` line) and ``summary.json`` (NaN as
    null); return the summary (means skip NaN; ``<metric>_images`` counts the images with a value)."""
    scored = [r for r in results if r.metrics is not None]
    summary = mean_metrics(r.metrics for r in scored)
    lines = ["name\t" + "\t".join(METRIC_KEYS)]
    for result in scored:
        values = asdict(result.metrics)
        lines.append(result.name + "\t" + "\t".join(_format(values[k]) for k in METRIC_KEYS))
    lines.append("# mean\t" + "\t".join(_format(float(summary[k])) for k in METRIC_KEYS))
    write_atomic(out_dir / "metrics.tsv", ("\n".join(lines) + "\n").encode())
    strict = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    write_json_atomic(out_dir / "summary.json", strict, indent=1)
    return summary


def summary_line(summary: dict[str, float | int]) -> str:
    """One human line: the means and how many images they cover."""
    return (
        f"mean over {summary['images']} images: Dice {summary['dice']:.4f}, IoU {summary['iou']:.4f}, "
        f"pixel accuracy {summary['pixel_accuracy']:.4f}, "
        f"HD95 {summary['hd95']:.2f} px ({summary['hd95_images']} images with a value)"
    )
