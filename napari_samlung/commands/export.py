"""``samlung export``: a slide's reviewed regions and class map to a training set, GeoJSON, label TIFF.

The lead's ``napari_samlung/cli.py`` adds the subcommand with :func:`add_export_arguments` and
calls :func:`run_export`; bad input raises a ``ValueError`` subclass whose one-line message names
the path, which the command prints before exiting with code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from napari_samlung.annotations.errors import ExportError
from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.annotations.training_set import export_training_set
from napari_samlung.results.classmap import ClassMap
from napari_samlung.slide import SlideError, open_slide


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``samlung export``."""
    parser.add_argument("results", type=Path, metavar="RESULTS_DIR",
                        help="a slide's result folder (<name>.samlung, holding classmap.zarr)")
    parser.add_argument("--slide", type=Path, help="the slide file (default: the path recorded at segmentation)")
    parser.add_argument("--training-set", type=Path, metavar="OUT",
                        help="export the reviewed regions as image/label tiles with a manifest into folder OUT")
    parser.add_argument("--geojson", type=Path, metavar="OUT.geojson",
                        help="export the class map as QuPath GeoJSON (level-0 pixel coordinates)")
    parser.add_argument("--label-tiff", type=Path, metavar="OUT.tif",
                        help="export the class map as a pyramidal label TIFF (zlib; .ome.tif for OME-TIFF)")
    parser.add_argument("--tile-size", type=int, help="training tile size (default: the model's tile size)")
    parser.add_argument("--reviewed-only", action="store_true",
                        help="GeoJSON: trace only inside reviewed regions, and add them as rectangles")
    parser.add_argument("--append", action="store_true", help="training set: add to an existing set at OUT")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")


def run_export(args: argparse.Namespace) -> int:
    """Run the exports asked for; returns the exit code (0). Raises ValueError on bad input."""
    outputs = [p for p in (args.training_set, args.geojson, args.label_tiff) if p is not None]
    if not outputs:
        raise ExportError("nothing to export: give --training-set, --geojson and/or --label-tiff")
    for path in (args.geojson, args.label_tiff):
        if path is not None:
            _check_output_file(path, args.overwrite)
    classmap = ClassMap.open(args.results)
    if args.training_set is not None:
        if not classmap.reviewed:
            raise ExportError(f"{args.results}: no reviewed regions to export as a training set "
                              "(review and apply a region in napari first)")
        try:
            with open_slide(args.slide or _recorded_slide(classmap)) as slide, \
                    tqdm(desc="training tiles", unit="tile", leave=False) as bar:
                out = export_training_set(classmap, slide, args.training_set, tile_size=args.tile_size,
                                          overwrite=args.overwrite, append=args.append,
                                          progress=_bar_callback(bar))
        except SlideError as exc:  # not a ValueError: keep its one-line message for exit code 2
            raise ExportError(f"{exc} (the slide can be given with --slide)") from None
        print(f"wrote {out} ({bar.n} tiles)")
    if args.geojson is not None:
        collection = classmap_to_geojson(classmap, args.geojson, reviewed_only=args.reviewed_only,
                                         reviewed_boxes=args.reviewed_only)
        print(f"wrote {args.geojson} ({len(collection['features'])} annotations)")
    if args.label_tiff is not None:
        with tqdm(desc="label TIFF", unit="tile", leave=False) as bar:
            classmap_to_label_tiff(classmap, args.label_tiff, progress=_bar_callback(bar))
        print(f"wrote {args.label_tiff}")
    return 0


def _check_output_file(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise ExportError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder, expected a file name")
    if path.exists() and not overwrite:
        raise ExportError(f"{path}: already exists (use --overwrite to replace it)")


def _recorded_slide(classmap: ClassMap) -> Path:
    recorded = (classmap.meta.get("slide") or {}).get("path")
    if not recorded:
        raise ExportError(f"{classmap.root}: no slide path recorded; give --slide")
    return Path(recorded)


def _bar_callback(bar: tqdm):
    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update
