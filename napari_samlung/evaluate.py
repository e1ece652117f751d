"""Evaluate a SAM-Lung checkpoint on a folder of images: ``samlung predict`` and ``--test-only``.

Each image is predicted whole when it fits the model (padded to a multiple of 16; sides above
``max_size`` are covered by overlapping windows whose logits are averaged), cleaned up with the
research code's morphological open/close, and scored against its label (Dice, IoU, pixel
accuracy, HD95; see :mod:`napari_samlung.metrics`). Results go to ``metrics.tsv`` (one row per
image, then a ``# mean`` line) and ``summary.json``; predicted masks optionally to ``masks/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from napari_samlung.errors import SamLungError
from napari_samlung.data.augment import PAD_VALUE
from napari_samlung.data.files import write_png
from napari_samlung.files import write_atomic
from napari_samlung.data.layouts import Pair, prediction_inputs
from napari_samlung.data.pairs import load_pair
from napari_samlung.inference.postprocess import morphological_cleanup
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.metrics import METRIC_KEYS, ImageMetrics, image_metrics, mean_metrics
from napari_samlung.model.checkpoint import load_checkpoint

#: Input sides must be multiples of the patch size; larger images are cut into windows.
SIZE_MULTIPLE = 16
MAX_SIZE = 1024
WINDOW_OVERLAP = 128


class PredictError(SamLungError):
    """Bad arguments to ``samlung predict``; the message names the argument."""


@dataclass(frozen=True)
class Postprocess:
    """Morphological open + close of each class (the research code: 15x15 kernel, 5 times)."""

    enabled: bool = True
    kernel_size: int = 15
    iterations: int = 5

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return labels
        return morphological_cleanup(labels, self.kernel_size, self.iterations)


@dataclass(frozen=True)
class ImageResult:
    """One evaluated image: its name and metrics (None when it has no label)."""

    name: str
    metrics: ImageMetrics | None


def _window_starts(length: int, window: int, overlap: int) -> list[int]:
    if length <= window:
        return [0]
    step = window - min(overlap, window // 2)
    count = math.ceil((length - window) / step) + 1
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def predict_logits(
    predictor: TilePredictor, images: torch.Tensor, max_size: int = MAX_SIZE, overlap: int = WINDOW_OVERLAP
) -> torch.Tensor:
    """Float32 logits (B, C, H, W) on the predictor's device for a (B, H, W, 3) uint8 batch.

    Sides up to ``max_size`` are padded (white) to a multiple of 16 and predicted whole; longer
    sides are covered by ``max_size`` windows overlapping by at least ``overlap`` (at most half a
    window), their logits averaged.
    """
    _, height, width, _ = images.shape
    padded = [s if s > max_size else -(-s // SIZE_MULTIPLE) * SIZE_MULTIPLE for s in (height, width)]
    images = F.pad(images, (0, 0, 0, padded[1] - width, 0, padded[0] - height), value=PAD_VALUE)
    win_h, win_w = min(padded[0], max_size), min(padded[1], max_size)
    total = count = None
    for y in _window_starts(padded[0], win_h, overlap):
        for x in _window_starts(padded[1], win_w, overlap):
            logits = predictor(images[:, y : y + win_h, x : x + win_w]).float()
            if total is None:
                if (win_h, win_w) == tuple(padded):
                    return logits[:, :, :height, :width]
                total = logits.new_zeros((*logits.shape[:2], *padded))
                count = logits.new_zeros((1, 1, *padded))
            total[:, :, y : y + win_h, x : x + win_w] += logits
            count[:, :, y : y + win_h, x : x + win_w] += 1
    return (total / count)[:, :, :height, :width]


def predict_labels(predictor: TilePredictor, images: torch.Tensor, max_size: int = MAX_SIZE) -> torch.Tensor:
    """(B, H, W) uint8 class maps (argmax of :func:`predict_logits`), on the predictor's device."""
    return predict_logits(predictor, images, max_size).argmax(1).to(torch.uint8)


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
    write_atomic(out_dir / "summary.json", (json.dumps(strict, indent=1) + "\n").encode())
    return summary


def summary_line(summary: dict[str, float | int]) -> str:
    """One human line: the means and how many images they cover."""
    return (
        f"mean over {summary['images']} images: Dice {summary['dice']:.4f}, IoU {summary['iou']:.4f}, "
        f"pixel accuracy {summary['pixel_accuracy']:.4f}, "
        f"HD95 {summary['hd95']:.2f} px ({summary['hd95_images']} images with a value)"
    )


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samlung predict``."""
    parser.add_argument("--checkpoint", required=True, help="SAM-Lung checkpoint (.pt)")
    parser.add_argument("--sam-weights",
                        help="official SAM ViT file, unless the checkpoint is self-contained")
    parser.add_argument(
        "--data-path",
        required=True,
        help="a split folder with mask/ (images) and label/, an exported training set, or a folder of images",
    )
    parser.add_argument("-o", "--output", required=True,
                        help="folder for metrics.tsv, summary.json and masks/")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--batch-size", type=int, default=4, help="images (of equal size) per forward pass")
    parser.add_argument("--save-masks", action="store_true", help="also write the predicted masks as PNG")
    parser.add_argument("--no-postprocess", action="store_true", help="skip the morphological open/close")
    parser.add_argument("--kernel-size", type=int, default=15,
                        help="open/close square kernel side (default 15)")
    parser.add_argument("--iterations", type=int, default=5, help="open/close repetitions (default 5)")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too (default: bf16 autocast)")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images ahead of the model")


def postprocess_from_args(args: argparse.Namespace) -> Postprocess:
    """The post-processing the options ask for; bad sizes are a :class:`PredictError`."""
    if args.kernel_size < 1:
        raise PredictError(f"--kernel-size must be >= 1, got {args.kernel_size}")
    if args.iterations < 0:
        raise PredictError(f"--iterations must be >= 0, got {args.iterations}")
    return Postprocess(not args.no_postprocess, args.kernel_size, args.iterations)


def run_predict(args: argparse.Namespace) -> int:
    """Evaluate ``args.checkpoint`` on ``args.data_path``; returns 0. Bad input raises a
    ``ValueError`` subclass whose message names the file or argument."""
    if args.batch_size < 1:
        raise PredictError(f"--batch-size must be >= 1, got {args.batch_size}")
    postprocess = postprocess_from_args(args)
    pairs = prediction_inputs(args.data_path)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise PredictError(f"{out_dir}: -o/--output exists and is not a folder")
    model = load_checkpoint(args.checkpoint, sam_weights=args.sam_weights, map_location="cpu")
    predictor = TilePredictor(model, model.config, args.device, amp=not args.no_amp)
    has_labels = any(pair.label is not None for pair in pairs)
    masks_dir = out_dir / "masks" if args.save_masks or not has_labels else None
    (masks_dir or out_dir).mkdir(parents=True, exist_ok=True)
    results = list(
        tqdm(
            evaluate_pairs(
                predictor, pairs, batch_size=args.batch_size, postprocess=postprocess,
                masks_dir=masks_dir, workers=args.workers,
            ),
            total=len(pairs), desc="predict", unit="image", file=sys.stderr,
        )
    )
    if has_labels:
        print(summary_line(write_results(out_dir, results)))
        print(f"per-image metrics: {out_dir / 'metrics.tsv'}")
    if masks_dir is not None:
        print(f"masks: {masks_dir}")
    return 0
