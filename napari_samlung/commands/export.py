"""``samlung export``: a slide's reviewed regions and class map to a training set, GeoJSON, label TIFF.

It also lists the reviewed regions and removes one (``--remove-reviewed ID``): the region is then
no longer exported as training data nor protected from later segmentations; its pixels keep the
correction until the area is segmented again. Removal takes the results folder's write lock.

The GeoJSON's tumour feature carries the slide's tumour burden as QuPath measurements: figures
stored in the class map are measured again first when a change made them out of date (a results
folder that another process is writing is exported without them, with a note).

Bad input raises an :class:`~napari_samlung.annotations.errors.ExportError` (or another
:class:`~napari_samlung.errors.SamLungError`) whose one-line message names the path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from napari_samlung.annotations.errors import ExportError
from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.annotations.training_set import export_training_set
from napari_samlung.commands.wording import note
from napari_samlung.results import burden
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.lock import Busy, writing
from napari_samlung.slide import SlideError, open_slide

DESCRIPTION = "Export a slide's class map and reviewed regions; list or remove reviewed regions."
MIN_TILE = 16  # the smallest training tile the training set takes


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--tile-size", type=training_tile,
                        help="training tile size, 16 to 4096 px (default: the model's tile size)")
    parser.add_argument("--reviewed-only", action="store_true",
                        help="GeoJSON: trace only inside reviewed regions, and add them as rectangles")
    parser.add_argument("--append", action="store_true", help="training set: add to an existing set at OUT")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument("--list-reviewed", action="store_true",
                        help="list the reviewed regions: id, level-0 box, when reviewed")
    parser.add_argument("--remove-reviewed", action="append", metavar="ID", default=[],
                        help="forget the reviewed region with this id (repeatable; ids from --list-reviewed); "
                             "its pixels stay until segmented again")


def training_tile(text: str) -> int:
    """A training tile side, from 16 px to the largest tile the engine segments."""
    from napari_samlung.inference.engine import MAX_TILE  # loads torch: only when the option is given

    value = int(text)
    if not MIN_TILE <= value <= MAX_TILE:
        raise argparse.ArgumentTypeError(f"must be from {MIN_TILE} to {MAX_TILE} px, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Remove and list reviewed regions, then run the exports asked for; returns the exit code (0).
    Raises a SamLungError on bad input."""
    outputs = [p for p in (args.training_set, args.geojson, args.label_tiff) if p is not None]
    if not (outputs or args.list_reviewed or args.remove_reviewed):
        raise ExportError("nothing to do: give --training-set, --geojson, --label-tiff, --list-reviewed "
                          "and/or --remove-reviewed")
    for path in (args.geojson, args.label_tiff):
        if path is not None:
            _check_output_file(path, args.overwrite)
    if args.remove_reviewed:
        _remove_reviewed(args.results, args.remove_reviewed)
    classmap = ClassMap.open(args.results)
    if args.list_reviewed:
        print(_reviewed_listing(classmap))
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
        except SlideError as exc:  # say how to point at the slide when the recorded one is gone
            raise ExportError(f"{exc} (the slide can be given with --slide)") from None
        print(f"wrote {out} ({bar.n} tiles)")
    if args.geojson is not None:
        figures = None if args.reviewed_only else _current_burden(args.results)
        collection = classmap_to_geojson(ClassMap.open(args.results), args.geojson, reviewed_only=args.reviewed_only,
                                         reviewed_boxes=args.reviewed_only)
        print(f"wrote {args.geojson} ({len(collection['features'])} annotations)"
              + (f"\n  {figures.line()}" if figures is not None else ""))
    if args.label_tiff is not None:
        with tqdm(desc="label TIFF", unit="tile", leave=False) as bar:
            classmap_to_label_tiff(classmap, args.label_tiff, progress=_bar_callback(bar))
        print(f"wrote {args.label_tiff}")
    return 0


def _remove_reviewed(root: Path, ids: list[str]) -> None:
    """Forget the reviewed regions ``ids`` (all known, else none is removed), under the folder's lock."""
    classmap = ClassMap.open(root, mode="r+")  # first: no lock file is made in a folder without a class map
    with writing(root, "samlung export --remove-reviewed"):
        classmap.refresh()
        known = [r["id"] for r in classmap.reviewed]
        unknown = [i for i in ids if i not in known]
        if unknown:
            listed = ", ".join(known) or "none"
            raise ExportError(f"{root}: no reviewed region {', '.join(unknown)} (its reviewed regions: {listed})",
                              param="remove_reviewed")
        for region_id in dict.fromkeys(ids):
            classmap.remove_reviewed(region_id)
            print(f"removed reviewed region {region_id} from {root}")


def _current_burden(root: Path) -> burden.Burden | None:
    """The tumour burden, measured again if out of date; None while another process writes."""
    try:
        return burden.current(root)
    except Busy as exc:
        note("export", f"{exc}; the GeoJSON is written without the tumour burden")
        return None


def _reviewed_listing(classmap: ClassMap) -> str:
    """The reviewed regions, one line each: id, box in level-0 slide pixels, when reviewed."""
    records = classmap.reviewed
    lines = [f"{classmap.root}: {len(records)} reviewed region(s)" + (" (id, level-0 x y width height, reviewed)"
                                                                       if records else "")]
    for record in records:
        y, x, h, w = classmap.to_slide(tuple(record["box"]))
        lines.append(f"  {record['id']}  {x} {y} {w} {h}  {record.get('created', 'unknown')}")
    return "\n".join(lines)


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
