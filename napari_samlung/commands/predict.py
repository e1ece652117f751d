"""``samlung predict``: evaluate a checkpoint on a folder of images (Dice, IoU, accuracy, HD95).

The folder is a research split (``mask/`` and ``label/``), an exported training set, or plain
images (then only the masks are written). Scoring is :mod:`napari_samlung.evaluation`'s; the
post-processing options are shared with ``samlung-finetune --test-only``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from napari_samlung.data.layouts import prediction_inputs
from napari_samlung.evaluation import Postprocess, PredictError, evaluate_pairs, summary_line, write_results
from napari_samlung.inference.models import load_predictor

DESCRIPTION = ("Predict every image of a folder (research split with mask/ and label/, an exported training set, "
               "or plain images) with the research code's post-processing, and write per-image metrics (TSV), a "
               "summary and optionally the masks.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.checkpoint`` on ``args.data_path``; returns 0. Bad input raises a
    :class:`~napari_samlung.errors.SamLungError` whose message names the file or argument."""
    if args.batch_size < 1:
        raise PredictError(f"--batch-size must be >= 1, got {args.batch_size}")
    postprocess = Postprocess(not args.no_postprocess, args.kernel_size, args.iterations)
    pairs = prediction_inputs(args.data_path)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise PredictError(f"{out_dir}: -o/--output exists and is not a folder")
    predictor = load_predictor(args.checkpoint, args.sam_weights, device=args.device, amp=not args.no_amp)
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
