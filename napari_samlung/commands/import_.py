"""``samlung import``: QuPath GeoJSON or a label image into a slide's results, as reviewed regions.

RESULTS_OR_SLIDE is a results folder (``<name>.samlung``) or a slide. For a slide, its existing
results are found as ``segment`` finds them; without any, new results are made where ``segment``
would put them, with an empty class map (every pixel "not reviewed") at the model's resolution
(``--checkpoint``/``--preset``, default the vit_b preset's; ``--target-mpp`` overrides it).
The file is checked whole before anything is written: a bad one prints one line naming it and
exits 2, leaving the class map (or the absence of one) as it was.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from napari_samlung.annotations.geojson_import import read_geojson
from napari_samlung.annotations.importing import (
    AnnotationImportError,
    Imported,
    Target,
    create_unreviewed,
    slide_record,
    write_imported,
)
from napari_samlung.annotations.label_import import read_label_image
from napari_samlung.commands.options import positive_float, positive_int
from napari_samlung.commands.wording import note
from napari_samlung.inference.engine import SegmentationParams, plan_segmentation
from napari_samlung.inference.models import model_spec
from napari_samlung.model.config import PRESETS
from napari_samlung.errors import SamLungError
from napari_samlung.results import burden
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import check_results_folder, choose_results
from napari_samlung.slide import SlideError, open_slide

DESCRIPTION = ("Import QuPath GeoJSON annotations or a label image (the label TIFF of 'samlung export', or a "
               "PNG/TIFF mask at the slide's or the model's resolution) into a slide's results as reviewed "
               "regions, ready for 'samlung export --training-set'.")
DEFAULT_PRESET = "vit_b"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samlung import``."""
    parser.add_argument("target", type=Path, metavar="RESULTS_OR_SLIDE",
                        help="a slide's results folder (<name>.samlung), or the slide (its results are found "
                             "or made as 'samlung segment' does)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--geojson", type=Path, metavar="FILE",
                        help="QuPath GeoJSON (FeatureCollection or list of features) in level-0 pixels")
    source.add_argument("--labels", type=Path, metavar="IMAGE",
                        help="label image: the project's label TIFF, or a PNG/TIFF mask at the slide's level-0, "
                             "a pyramid level's or the class map's size (0/255 masks are tumor)")
    parser.add_argument("--slide", type=Path,
                        help="the slide of a results folder (default: the one recorded in it)")
    parser.add_argument("-o", "--output", metavar="OUT_DIR",
                        help="for a slide: the folder of its results (as 'samlung segment -o')")
    group = parser.add_argument_group("new results (a slide without results yet)")
    group.add_argument("--checkpoint", metavar="CKPT", help="the SAM-Lung checkpoint whose resolution and classes "
                                                            "the class map takes")
    group.add_argument("--preset", choices=tuple(PRESETS),
                       help=f"the model preset whose resolution the class map takes (default {DEFAULT_PRESET})")
    group.add_argument("--num-classes", type=positive_int, default=1,
                       help="classes besides background, with --preset (default 1: tumor)")
    group.add_argument("--mpp", type=positive_float, help="the slide's microns per pixel, for files that do not say")
    group.add_argument("--target-mpp", type=positive_float,
                       help="the class map's resolution instead of the model's (microns per pixel)")
    group.add_argument("--allow-upsampling", action="store_true",
                       help="allow a class map more than twice as fine as the slide's finest level")


def run(args: argparse.Namespace) -> int:
    """Check the file against the results (or the slide's new results), then write it; 0 when done."""
    source: Path = args.geojson or args.labels
    if not source.is_file():
        raise AnnotationImportError(f"{source}: no such file", param="geojson" if args.geojson else "labels")
    root = _existing_results(args.target)
    if root is None:
        root = _import_into_new(args, source)
    else:
        _import_into(root, args, source)
    return 0


def _existing_results(path: Path) -> Path | None:
    """The results folder ``path`` names, or None when it is a slide; a folder without a class map
    is an error."""
    if path.is_dir():
        if not ClassMap.exists(path):
            raise AnnotationImportError(f"{path}: a folder without a class map (give a results folder or a slide)")
        return path
    if not path.is_file():
        raise AnnotationImportError(f"{path}: no such results folder or slide")
    return None


def _import_into(root: Path, args: argparse.Namespace, source: Path) -> None:
    classmap = ClassMap.open(root, mode="r+")
    levels = _slide_levels(classmap, args.slide) if args.labels else ()
    target = Target.of(classmap, levels)
    _write(classmap, target, _read(args, source, target), root)


def _import_into_new(args: argparse.Namespace, source: Path) -> Path:
    """Import into the slide's results: its existing ones, else new ones made only once the file
    has passed every check."""
    if args.output is not None:
        check_results_folder(args.output)
    root, notice = choose_results(args.target, args.output)
    if notice:
        note("import", notice)
    if ClassMap.exists(root):
        _import_into(root, args, source)
        return root
    with open_slide(args.target, mpp=args.mpp) as slide:
        spec = model_spec(args.checkpoint, None if args.checkpoint else args.preset or DEFAULT_PRESET,
                          args.num_classes)
        plan = plan_segmentation(slide, spec, SegmentationParams(target_mpp=args.target_mpp,
                                                                 allow_upsampling=args.allow_upsampling))
        for text in plan.notes:
            note("import", text)
        num_classes = spec.num_classes
        target = Target.fresh(slide, plan.shape, plan.scale, num_classes)
        imported = _read(args, source, target)
        model = {"preset": spec.preset, "mpp": plan.target_mpp, "tile": plan.tile, "num_classes": num_classes}
        if args.checkpoint:
            model["checkpoint"] = str(Path(args.checkpoint).resolve())
        classmap = create_unreviewed(root, target, model=model,
                                     slide=slide_record(slide.path, slide.name, slide.format, slide.shape, slide.mpp))
    print(f"made new results in {root} ({target.shape[1]} x {target.shape[0]} px class map, not reviewed)")
    _write(classmap, target, imported, root)
    return root


def _read(args: argparse.Namespace, source: Path, target: Target) -> Imported:
    return read_geojson(source, target) if args.geojson else read_label_image(source, target)


def _write(classmap: ClassMap, target: Target, imported: Imported, root: Path) -> None:
    for text in imported.notes:
        note("import", text)
    with tqdm(desc="importing", unit="block", leave=False, disable=None) as bar:
        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        write_imported(classmap, imported, progress=update)
    print(f"imported {imported.message(target)} -> {root}")
    try:
        print(burden.update_metadata(classmap).line())
    except SamLungError as e:  # another writer, a damaged chunk elsewhere: the import stands
        note("import", f"tumour burden not measured: {e}")


def _slide_levels(classmap: ClassMap, slide_path: Path | None) -> tuple[tuple[int, int], ...]:
    """The pyramid level sizes of the results' slide (given, else recorded); only level 0 (as
    recorded) when the slide cannot be opened."""
    path = slide_path or (classmap.meta.get("slide") or {}).get("path")
    if not path:
        return ()
    try:
        with open_slide(path) as slide:
            return tuple(tuple(s) for s in slide.level_shapes)
    except SlideError:
        if slide_path is not None:
            raise
        return ()
