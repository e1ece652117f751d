"""``samlung suggest``: the tissue fields to review next, where the model was least sure.

Prints the K not-yet-reviewed fields (one model tile each) with the lowest mean confidence, as
level-0 boxes; ``--geojson FILE`` also writes them as QuPath annotations (File > Import objects),
each with its rank and mean confidence as measurements. Reads only: takes no lock.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_samlung.commands.options import positive_int
from napari_samlung.errors import SamLungError
from napari_samlung.files import write_json_atomic
from napari_samlung.inference.suggestions import Field, suggest
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import ConfidenceMap, ConfidenceMissing
from napari_samlung.results.folders import find_results

DESCRIPTION = ("List the K segmented, not-yet-reviewed tissue fields (one model tile each) where the model was "
               "least confident, as level-0 boxes (x y width height) with their mean confidence (0: a coin "
               "toss, 1: certain); --geojson also writes them as QuPath annotations.")
SUGGESTION_NAME = "Suggested review"
SUGGESTION_COLOR = (255, 64, 160)  # magenta: reads on pink and purple H&E


class SuggestError(SamLungError):
    """Results that cannot be ranked: no class map, no confidence map, a bad output file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``samlung suggest``."""
    parser.add_argument("results", type=Path, metavar="RESULTS",
                        help="a slide's result folder (<name>.samlung), or the slide whose results to read "
                             "(found beside it or in the per-user results folder)")
    parser.add_argument("-n", "--count", type=positive_int, default=10,
                        help="how many fields to suggest (default 10)")
    parser.add_argument("--geojson", type=Path, metavar="OUT.geojson",
                        help="also write the fields as QuPath GeoJSON rectangles (level-0 pixel coordinates)")
    parser.add_argument("--overwrite", action="store_true", help="replace the GeoJSON file if it exists")


def run(args: argparse.Namespace) -> int:
    """Print the suggested fields (and write the GeoJSON asked for); returns 0. Raises a
    SamLungError on bad input."""
    if args.geojson is not None:
        _check_output(args.geojson, args.overwrite)
    classmap = ClassMap.open(_results_folder(args.results))
    try:
        confidence = ConfidenceMap.open_for(classmap)
    except ConfidenceMissing as missing:
        raise SuggestError(f"{missing}; segment the slide again to make one (samlung segment SLIDE "
                           "--overwrite; reviewed regions stay as they are)") from None
    fields = suggest(classmap, confidence, args.count)
    print(listing(classmap, fields))
    if args.geojson is not None:
        write_json_atomic(args.geojson, {"type": "FeatureCollection", "features": features(fields)})
        print(f"wrote {args.geojson} ({len(fields)} annotations)")
    return 0


def listing(classmap: ClassMap, fields: list[Field]) -> str:
    """A header line and one line per field: rank, level-0 x y width height, mean confidence."""
    if not fields:
        return f"{classmap.root}: no segmented field left that is not reviewed"
    lines = [f"{classmap.root}: {len(fields)} field(s) to review, least confident first "
             "(rank, level-0 x y width height, mean confidence)"]
    for rank, field in enumerate(fields, 1):
        y, x, h, w = field.slide_box
        lines.append(f"  {rank}  {x} {y} {w} {h}  {field.confidence:.3f}")
    return "\n".join(lines)


def features(fields: list[Field]) -> list[dict[str, Any]]:
    """The fields as QuPath annotations: rectangles in level-0 pixels, with rank and confidence."""
    out = []
    for rank, field in enumerate(fields, 1):
        y, x, h, w = field.slide_box
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]  # counter-clockwise (right-hand rule)
        out.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "name": f"suggestion {rank}",
                           "classification": {"name": SUGGESTION_NAME, "color": list(SUGGESTION_COLOR)},
                           "measurements": {"rank": rank, "mean confidence": round(field.confidence, 4)}},
        })
    return out


def _results_folder(path: Path) -> Path:
    """``path`` if it is a result folder, else the result folder of the slide (a file, or a DICOM or
    OME-Zarr folder) at ``path``."""
    if ClassMap.exists(path):
        return path
    if not path.exists():
        raise SuggestError(f"{path}: no such file or folder")
    found = find_results(path)
    if found is None:
        raise SuggestError(f"{path}: no class map in it (no {ClassMap.STORE}) and no results of it as a slide; "
                           "give a slide's result folder, or segment the slide first (samlung segment)")
    return found


def _check_output(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise SuggestError(f"{path}: the folder {path.parent} does not exist", param="geojson")
    if path.is_dir():
        raise SuggestError(f"{path}: is a folder, expected a file name", param="geojson")
    if path.exists() and not overwrite:
        raise SuggestError(f"{path}: already exists (use {{opt:overwrite}} to replace it)", param="geojson")
