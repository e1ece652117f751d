"""The ``samlung`` command: segment, export, predict, demo.

Errors the user can fix (a bad file, argument or checkpoint) print one line naming it and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --sam-weights / --preset / --device, shared by model-using commands."""
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", metavar="CKPT", help="SAM-Lung checkpoint (.pt)")
    group.add_argument("--sam-weights", metavar="SAM.pth",
                       help="official SAM ViT-B weights (sam_vit_b_01ec64.pth); not needed for a self-contained checkpoint")
    group.add_argument("--preset", choices=("vit_b", "tiny"),
                       help="build a fresh model of this preset instead of loading a checkpoint (for trials)")
    group.add_argument("--num-classes", type=_positive_int, default=1,
                       help="classes besides background, for --preset (default 1: tumor)")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment", help="segment whole slides (or a region) into class maps, label TIFF and GeoJSON",
        description="Segment slides at the model's resolution into a class map on disk (resumable), "
                    "then export it as a pyramidal label TIFF and QuPath GeoJSON. Under torchrun each rank "
                    "takes its share of the slides.")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (svs, ndpi, tif/tiff, ome.tif, png, jpg)")
    p.add_argument("-o", "--output", metavar="OUT_DIR",
                   help="folder for the results (default: next to each slide); one <name>.samlung folder per slide")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=_positive_int, default=8, help="tiles per batch (default 8)")
    p.add_argument("--tile-size", type=_positive_int, help="tile side in model pixels (default: the model's)")
    p.add_argument("--overlap", type=_non_negative_int, help="tile overlap in model pixels (default: tile size / 8)")
    p.add_argument("--mpp", type=_positive_float, help="the slides' microns per pixel, for files that do not say")
    p.add_argument("--target-mpp", type=_positive_float,
                   help="segment at this resolution instead of the model's (microns per pixel)")
    p.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="segment only this level-0 rectangle")
    p.add_argument("--overwrite", action="store_true", help="segment again even where a result is complete")
    p.add_argument("--postprocess", action="store_true", help="morphological open + close of the result")
    p.add_argument("--kernel-size", type=_positive_int, default=15, help="post-processing kernel (default 15)")
    p.add_argument("--iterations", type=_non_negative_int, default=5, help="post-processing repetitions (default 5)")
    p.add_argument("--no-tissue-detection", action="store_true", help="segment every tile, tissue or not")
    p.add_argument("--workers", type=_positive_int, help="tile-reading threads (default: CPU count, at most 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder blocks (faster on GPUs)")
    p.add_argument("--no-export", action="store_true", help="write the class map only (no label TIFF / GeoJSON)")
    p.set_defaults(func=_segment)


def _segment(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from napari_samlung.results.folders import results_dir
    from napari_samlung.inference.engine import AlreadyComplete, SegmentationParams, segment
    from napari_samlung.inference.models import load_model
    from napari_samlung.inference.predictor import TilePredictor
    from napari_samlung.slide import SlideError, open_slide

    params = SegmentationParams(
        tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, target_mpp=args.target_mpp,
        skip_background=not args.no_tissue_detection, postprocess=args.postprocess,
        kernel_size=args.kernel_size, iterations=args.iterations, workers=args.workers)
    params.validate()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    slides = [Path(s) for s in args.slides]
    for path in slides:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    mine = slides[rank::world]
    device = args.device
    if device == "auto" and world > 1 and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    model, info = load_model(args.checkpoint, args.sam_weights, args.preset, args.num_classes)
    predictor = TilePredictor(model, model.config, device, compile=args.compile, info=info)
    region = None
    if args.region is not None:
        x, y, w, h = args.region
        region = (y, x, h, w)
    failures = 0
    for path in mine:
        try:
            slide = open_slide(path, mpp=args.mpp)
        except SlideError as exc:
            print(f"samlung segment: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        with slide:
            root = results_dir(path, args.output)
            bar = tqdm(desc=path.name, unit="tile", dynamic_ncols=True, disable=None)

            def show(event, bar=bar):
                bar.total = event.total
                bar.set_postfix_str(event.phase)
                bar.update(event.done - bar.n)

            try:
                result = segment(slide, predictor, root, params, region=region, overwrite=args.overwrite, progress=show)
            except AlreadyComplete as exc:
                bar.close()
                print(f"samlung segment: {exc}; skipped")
                continue
            except (ValueError, SlideError) as exc:
                bar.close()
                print(f"samlung segment: error: {exc}", file=sys.stderr)
                failures += 1
                continue
            bar.close()
            for note in result.plan.notes:
                print(f"samlung segment: note: {note}", file=sys.stderr)
            exported = [] if args.no_export else _export_segmentation(root, result.classmap)
            tiles = result.tiles
            print(f"{path.name}: {tiles.get('model', 0)} tiles segmented, {tiles.get('background', 0)} without tissue "
                  f"skipped, {tiles.get('done', 0)} resumed, {result.seconds:.1f} s -> {root}"
                  + "".join(f"\n  {p}" for p in exported))
    return EXIT_USAGE if failures else 0


def _export_segmentation(root: Path, classmap) -> list[Path]:
    """The label TIFF and GeoJSON next to the class map."""
    from napari_samlung.annotations.geojson import classmap_to_geojson
    from napari_samlung.annotations.label_tiff import classmap_to_label_tiff

    name = root.name.removesuffix(".samlung")
    tiff, geojson = root / f"{name}-labels.tif", root / f"{name}.geojson"
    classmap_to_label_tiff(classmap, tiff)
    classmap_to_geojson(classmap, geojson)
    return [tiff, geojson]


# Commands whose options and code live in their own modules (which import torch): name ->
# (module, options function, run function, help, description).
_MODULE_COMMANDS = {
    "predict": (
        "napari_samlung.evaluate", "add_predict_arguments", "run_predict",
        "evaluate a checkpoint on image tiles: Dice, IoU, accuracy, HD95 per image",
        "Predict every image of a folder (research split with mask/ and label/, an exported training set, or "
        "plain images) with the research code's post-processing, and write per-image metrics (TSV), a summary "
        "and optionally the masks."),
    "export": (
        "napari_samlung.commands.export", "add_export_arguments", "run_export",
        "export a slide's results: training set of reviewed regions, GeoJSON, label TIFF",
        "Export a slide's class map and reviewed regions."),
    "demo": (
        "napari_samlung.commands.demo", "add_demo_arguments", "run_demo_command",
        "run the whole loop on a built-in synthetic slide (CPU, a few minutes)",
        "Segment a synthetic slide with a tiny model, correct one region from the known truth, export it, "
        "fine-tune on it with two DDP processes, segment again, and print Dice before and after. --gui opens "
        "napari on the same data."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``samlung`` parser. With ``command``, only that subcommand's options are filled in, so
    ``samlung --help`` or ``samlung segment`` does not import the other commands' modules."""
    parser = _Parser(prog="samlung", description="SAM-Lung tumor segmentation for whole-slide H&E images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_segment(sub)
    for name, (module, add_arguments, run, help_text, description) in _MODULE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        if command in (None, name):
            code = importlib.import_module(module)
            getattr(code, add_arguments)(p)
            p.set_defaults(func=getattr(code, run))
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line (``samlung segment: error: ...``) and exit 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    from napari_samlung.slide import SlideError

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its messages repeat what our errors say
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")  # "" (no command): fill in none
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, SlideError) as exc:
        print(f"samlung {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"samlung {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
