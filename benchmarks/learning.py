"""Learning on real tissue: test Dice of the ``tiny`` preset after two-process DDP fine-tuning on
the OCDC tiles, for each ``--tune``, against the all-tumour guess.

    python benchmarks/learning.py                      # mona, full and head
    python benchmarks/learning.py --tune default --json learning.json

Data: the ten real H&E tiles of ``../shared/fixtures/ocdc`` (640 px, oral squamous cell carcinoma,
tumour masks thresholded at > 127), resized to ``--size`` px (``--cut 2`` cuts each into its
quadrants first). The split is fixed by source tile: 5 train, 2 validate, 3 test; the test tiles
span tumour fractions 0.20 to 0.65, so that no constant guess scores well.

Each run starts from the same untrained ``tiny`` model (seed 0, a random encoder: no SAM weights
exist for it, so it is normalized with the training tiles' own colour statistics), saved as a
checkpoint and fine-tuned by ``samlung-finetune --init-checkpoint`` through the project's launcher
(torchrun, two processes, gloo on the CPU), as the widget runs it. The checkpoint with the best
validation Dice is scored on the test split: mean Dice per image of the raw predictions (no
post-processing). The all-tumour guess calls every pixel tumour.

Importable: :func:`measure_learning` returns the figures (the slow test in
``tests/test_finetune_tune.py`` calls it for the default mode).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_samlung.data.files import read_gray, read_rgb, write_png  # noqa: E402
from napari_samlung.inference.images import predict_labels  # noqa: E402
from napari_samlung.inference.predictor import TilePredictor  # noqa: E402
from napari_samlung.metrics import dice_score  # noqa: E402
from napari_samlung.model import SamLung, SamLungConfig, load_checkpoint, save_checkpoint  # noqa: E402
from napari_samlung.training_runs.contract import TUNE_MODES, FinetuneConfig  # noqa: E402
from napari_samlung.training_runs.launcher import run_finetune  # noqa: E402

OCDC = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ocdc"
SPLITS = {
    "train": ("1009009_r27c10", "1009009_r31c0", "1009009_r31c1", "1009009_r35c4", "1009009_r41c5"),
    "val": ("1009009_r27c5", "1009009_r35c10"),
    "test": ("1009009_r28c12", "1009009_r35c8", "1009009_r41c2"),
}
SIZE = 160
EPOCHS = 150
LR = 0.02
BATCH_SIZE = 2  # per process
NPROC = 2
CUT = 1  # each tile cut into CUT x CUT pieces
ENCODER_LR_SCALE = 0.1


@dataclass(frozen=True)
class Run:
    """The settings of one learning measurement (the figures depend on every one of them)."""

    size: int = SIZE
    epochs: int = EPOCHS
    lr: float = LR
    batch_size: int = BATCH_SIZE
    nproc: int = NPROC
    cut: int = CUT
    encoder_lr_scale: float = ENCODER_LR_SCALE


def pieces(ocdc: Path, name: str, size: int, cut: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """One OCDC tile cut into ``cut`` x ``cut`` pieces as (name, RGB image, 0/1 label), each resized to ``size``."""
    image = read_rgb(ocdc / "images" / f"{name}.jpg")
    tumour = (read_gray(ocdc / "masks" / f"{name}.jpg") > 127).astype(np.float32)
    side = image.shape[0] // cut
    out = []
    for qy in range(cut):
        for qx in range(cut):
            box = np.s_[qy * side:(qy + 1) * side, qx * side:(qx + 1) * side]
            rgb = Image.fromarray(image[box]).resize((size, size), Image.Resampling.BILINEAR)
            label = Image.fromarray(tumour[box]).resize((size, size), Image.Resampling.BOX)
            out.append((f"{name}_{qy}{qx}", np.asarray(rgb), (np.asarray(label) > 0.5).astype(np.uint8)))
    return out


def write_data(ocdc: Path, root: Path, size: int, cut: int) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The research layout (``root/{split}/mask`` images, ``label`` 0/255) of the fixed split;
    returns the pairs by split."""
    pairs = {split: [q for name in names for q in pieces(ocdc, name, size, cut)] for split, names in SPLITS.items()}
    for split, items in pairs.items():
        for folder in ("mask", "label"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for name, image, label in items:
            write_png(root / split / "mask" / f"{name}.png", image)
            write_png(root / split / "label" / f"{name}.png", label * 255)
    return pairs


def test_dice(checkpoint: Path, pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> float:
    """Mean per-image Dice of the checkpoint's raw predictions."""
    model = load_checkpoint(checkpoint)
    predictor = TilePredictor(model, model.config, "cpu", amp=False)
    images = torch.from_numpy(np.stack([image for _, image, _ in pairs]))
    predicted = predict_labels(predictor, images).cpu().numpy()
    return float(np.mean([dice_score(p, label) for p, (_, _, label) in zip(predicted, pairs)]))


def all_tumour_dice(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> float:
    """Mean per-image Dice of calling every pixel tumour."""
    return float(np.mean([dice_score(np.ones_like(label), label) for _, _, label in pairs]))


def untrained(path: Path, size: int, train: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """The tiny model every run starts from (seed 0, tiles of ``size``, normalized with the training
    tiles' own colour statistics: a random encoder owes nothing to SAM's), as a self-contained checkpoint."""
    pixels = np.concatenate([image.reshape(-1, 3) for _, image, _ in train]) / 255.0
    stats = dict(pixel_mean=tuple(pixels.mean(0).round(3).tolist()), pixel_std=tuple(pixels.std(0).round(3).tolist()))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return save_checkpoint(SamLung(SamLungConfig.tiny(num_classes=1, img_size=size, **stats)), path,
                               include_encoder=True)


def fine_tune(data: Path, start: Path, out: Path, tune: str | None, run: Run) -> tuple[Path, float]:
    """One samlung-finetune run through the launcher; the best checkpoint and the seconds taken."""
    config = FinetuneConfig([data], start, out, epochs=run.epochs, batch_size=run.batch_size, lr=run.lr,
                            device="cpu", nproc=run.nproc, tune=tune,
                            extra_args=("--print-freq", "1000", "--encoder-lr-scale", str(run.encoder_lr_scale)))
    started = time.perf_counter()
    steps = run_finetune(config)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value.checkpoint, time.perf_counter() - started


def measure_learning(ocdc: Path = OCDC, tunes: tuple[str | None, ...] = (None,), run: Run = Run(),
                     out: Path | None = None) -> dict:
    """Fine-tune once per ``tunes`` entry (None: the program's default) and score each on the test
    split; the data and the runs go to ``out`` (kept) or to a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out or tmp)
        pairs = write_data(ocdc, root / "DATA", run.size, run.cut)
        start = untrained(root / "untrained.pt", run.size, pairs["train"])
        figures = {"all_tumour_test_dice": all_tumour_dice(pairs["test"]),
                   "images": {split: len(items) for split, items in pairs.items()},
                   "settings": run.__dict__, "runs": {}}
        for tune in tunes:
            label = tune or "default"
            checkpoint, seconds = fine_tune(root / "DATA", start, root / f"run-{label}", tune, run)
            model_tune = load_checkpoint(checkpoint).config.tune
            figures["runs"][label] = {"tune": model_tune, "test_dice": test_dice(checkpoint, pairs["test"]),
                                      "seconds": seconds}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocdc", type=Path, default=OCDC, help="the OCDC tiles (images/, masks/)")
    parser.add_argument("--tune", nargs="+", choices=(*TUNE_MODES, "default"), default=list(TUNE_MODES),
                        help="the modes to measure (default: the program's default for this model)")
    parser.add_argument("--size", type=int, default=SIZE, help="tile side after resizing (multiple of 16)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per step per process")
    parser.add_argument("--cut", type=int, default=CUT, help="cut each tile into CUT x CUT pieces")
    parser.add_argument("--encoder-lr-scale", type=float, default=ENCODER_LR_SCALE)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--out", type=Path, default=None, help="keep the data and the runs' folders here")
    args = parser.parse_args(argv)
    if not (args.ocdc / "images").is_dir():
        parser.exit(2, f"{args.ocdc}: no OCDC tiles there (images/, masks/)\n")
    tunes = tuple(None if tune == "default" else tune for tune in args.tune)
    run = Run(size=args.size, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, cut=args.cut,
              encoder_lr_scale=args.encoder_lr_scale)
    figures = measure_learning(args.ocdc, tunes, run, args.out)
    images = figures["images"]
    print(f"tiny preset, {run.nproc} DDP processes on the CPU ({torch.get_num_threads()} threads here), "
          f"{images['train']}/{images['val']}/{images['test']} train/val/test tiles of {run.size} px, "
          f"{run.epochs} epochs, batch {run.batch_size} per process, lr {run.lr}")
    print(f"all-tumour guess      test Dice {figures['all_tumour_test_dice']:.3f}")
    for label, result in figures["runs"].items():
        name = f"--tune {label}" if label != "default" else f"default ({result['tune']})"
        print(f"{name:<21} test Dice {result['test_dice']:.3f}   ({result['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
