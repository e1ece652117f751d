"""``samlung summary``: the tumour burden of a batch of slides, one line each and a CSV table.

``samlung summary RESULTS... --csv summary.csv`` takes result folders (``<name>.samlung``) or
folders holding them (the ``-o`` folder of ``samlung segment``), prints each slide's figures and
writes one row per slide. Figures stored in a class map are used while they describe it; a map
changed since (a review applied, an import) or counted with another minimum region area is
measured again. ``samlung segment`` merges its slides' rows into a table the same way
(:func:`merge_table`), so rows of earlier batches in the same folder stay.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import re
from pathlib import Path
from typing import Any, Iterator

from napari_samlung.commands.wording import report_user_error
from napari_samlung.errors import SamLungError
from napari_samlung.files import write_atomic
from napari_samlung.results import burden
from napari_samlung.results.burden import Burden
from napari_samlung.results.classmap import ClassMap, ClassMapError
from napari_samlung.results.folders import SUFFIX
from napari_samlung.results.lock import writing

DESCRIPTION = ("Print the tumour burden of slides (tumour and tissue area, tumour fraction of the tissue, "
               "tumour regions) from their results, and write it as a CSV table, one row per slide.")
EXIT_FAILURES = 2
COLUMNS = ("slide", "tumour_area_mm2", "tissue_area_mm2", "tumour_percent_of_tissue", "tumour_regions",
           "min_region_area_mm2", "segmented_percent_of_tissue", "reviewed_regions", "status", "um_per_px",
           "measured", "results", "slide_path")
_AREA = re.compile(r"^\s*([0-9.eE+-]+)\s*(mm2|mm²|mm\^2|um2|µm2|μm2|um²|µm²|μm²|um\^2|µm\^2)?\s*$")
_MM2 = ("mm2", "mm²", "mm^2")


class SummaryError(SamLungError):
    """A summary table that cannot be written or merged (the message names the file)."""


def min_region_area(text: str) -> float:
    """An area in µm² (``10000``, ``10000um2``) or mm² (``0.01mm2``), as µm²."""
    found = _AREA.match(text)
    try:
        value = float(found.group(1)) if found else float("nan")
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be an area of zero or more, in µm² (10000) or mm² (0.01mm2); "
                                         f"got {text!r}")
    return value * burden.UM2_PER_MM2 if found.group(2) in _MM2 else value


def add_min_region_area(parser: argparse.ArgumentParser) -> None:
    """``--min-region-area``, shared with ``samlung segment``."""
    parser.add_argument("--min-region-area", type=min_region_area, metavar="AREA",
                        help="smallest tumour region counted, in µm² (10000) or with a unit (0.01mm2); "
                             "default 10000 µm² = 0.01 mm², or the one a slide was last measured with")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samlung summary``."""
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                        help="a slide's result folder (<name>.samlung) or a folder holding several")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="write the table to FILE (replaced as a whole), one row per slide")
    add_min_region_area(parser)


def run(args: argparse.Namespace) -> int:
    """Print each slide's burden and write the table; 0, or 2 when some slide failed (each said so
    in one line)."""
    if args.csv is not None:
        check_table_path(args.csv)
    roots, failed = [], 0
    for given in args.results:
        with _reported() as ok:
            roots += result_folders(given)
        failed += not ok
    rows = []
    for root in roots:
        with _reported() as ok:
            figures = burden.current(root, min_region_area_um2=args.min_region_area)
            print(f"{_name(root)}: {figures.line()}")
            rows.append(table_row(root, figures))
        failed += not ok
    if args.csv is not None:
        write_table(args.csv, rows)
        print(f"wrote {args.csv} ({len(rows)} slide{'s' if len(rows) != 1 else ''})")
    return EXIT_FAILURES if failed else 0


@contextlib.contextmanager
def _reported() -> Iterator[list]:
    """Report a user error in one line and go on; the yielded list is empty (falsy) after one."""
    ok = [True]
    try:
        yield ok
    except Exception as exc:
        if not report_user_error("summary", exc):
            raise
        ok.clear()


def result_folders(path: Path) -> list[Path]:
    """``path`` when it holds a class map, else the result folders directly inside it."""
    if ClassMap.exists(path):
        return [path]
    if not path.is_dir():
        raise ClassMapError(f"{path}: no such folder")
    found = sorted(p for p in path.iterdir() if p.is_dir() and ClassMap.exists(p))
    if not found:
        raise ClassMapError(f"{path}: neither a result folder (no classmap.zarr) nor a folder holding "
                            f"result folders (*{SUFFIX})")
    return found


def _name(root: Path) -> str:
    try:
        return (ClassMap.open(root).meta.get("slide") or {}).get("name") or root.name
    except ClassMapError:
        return root.name


def table_row(root: Path, figures: Burden) -> dict[str, Any]:
    """One slide's row of the summary table."""
    cm = ClassMap.open(root)
    slide = cm.meta.get("slide") or {}
    fraction, segmented = figures.tumour_fraction, figures.segmented_fraction
    return {
        "slide": slide.get("name") or root.name,
        "tumour_area_mm2": _number(figures.tumour_mm2),
        "tissue_area_mm2": _number(figures.tissue_mm2),
        "tumour_percent_of_tissue": _number(None if fraction is None else 100 * fraction, 2),
        "tumour_regions": "" if figures.regions is None else figures.regions,
        "min_region_area_mm2": _number(figures.min_region_area_mm2),
        "segmented_percent_of_tissue": _number(None if segmented is None else 100 * segmented, 2),
        "reviewed_regions": len(cm.reviewed),
        "status": cm.status,
        "um_per_px": _number(figures.pixel_um),
        "measured": figures.when,
        "results": str(Path(root).resolve()),
        "slide_path": slide.get("path") or "",
    }


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}" if value >= 1 else f"{value:.{digits}g}"


def check_table_path(path: Path) -> None:
    """A table path whose folder exists and that is not a folder."""
    if path.is_dir():
        raise SummaryError(f"{path}: is a folder, expected a file name for the table", param="csv")
    if not path.parent.is_dir():
        raise SummaryError(f"{path}: the folder {path.parent} does not exist", param="csv")


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as the CSV table ``path``, atomically."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (str(r["slide"]), str(r["results"]))))
    write_atomic(path, out.getvalue().encode("utf-8"))


def read_table(path: Path) -> list[dict[str, Any]]:
    """The rows of an existing summary table (none when there is no file)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "results" not in reader.fieldnames or "slide" not in reader.fieldnames:
            raise SummaryError(f"{path}: not a samlung summary table (no 'slide' and 'results' columns); "
                               "move it away or choose another table", param="summary")
        return [{k: row.get(k, "") for k in COLUMNS} for row in reader]


def merge_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Put ``rows`` into the table ``path``, replacing the rows of the same result folders and
    keeping the others; processes merging into one table (torchrun ranks) take turns."""
    with writing(path.parent, f"samlung segment (merging {path.name})", wait_s=60):
        mine = {r["results"] for r in rows}
        write_table(path, [r for r in read_table(path) if r["results"] not in mine] + rows)
