"""Label-TIFF export of a huge, mostly empty class map: time and peak memory against its size.

Makes a SIZE x SIZE class map (1,000,000 px a side by default, as at model resolution for a file
declaring that size) of which only a PATCH x PATCH region holds labels, as after ``samlung
segment --region``, then exports it with ``classmap_to_label_tiff``. Each case runs in a fresh
process, which reports the export's wall time and its peak resident memory (VmHWM: the whole
process, imports included) beside that of the process before the export. ``--dense`` adds the
writer without the stored-chunk listing (every tile read and encoded) for comparison; keep SIZE
small for it (it reads the whole map). Prints; asserts nothing.

    python benchmarks/export_speed.py [--size 1000000] [--patch 2048] [--dense] [--dir /tmp/samlung-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_mib() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss may count the parent's, see README)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def one_case(folder: Path, size: int, patch: int, dense: bool) -> dict:
    """Build the map, export it, and return the figures (run in a child process)."""
    from napari_samlung.annotations.label_tiff import classmap_to_label_tiff, exact_mpp, label_tile
    from napari_samlung.results.classmap import ClassMap
    from napari_samlung.slide.tiff_writer import write_pyramidal_tiff

    root = folder / f"map-{size}.samlung"
    shutil.rmtree(root, ignore_errors=True)
    cm = ClassMap.create(root, (size, size), scale=1.0, num_classes=1, slide={"mpp": 0.5}, model={})
    y = x = size // 2 - patch // 2 + 300  # off the chunk grid
    cm.write((y, x, patch, patch), np.random.default_rng(0).integers(0, 2, (patch, patch), dtype=np.uint8))
    before = _peak_mib()
    out = folder / f"labels-{size}.tif"
    t = time.perf_counter()
    if dense:
        write_pyramidal_tiff(out, cm.levels[0], mpp=exact_mpp(cm), tile=label_tile(cm.shape), compression="zlib",
                             kind="labels")
    else:
        classmap_to_label_tiff(cm, out)
    seconds = time.perf_counter() - t
    figures = {"size": size, "patch": patch, "dense": dense, "seconds": round(seconds, 2),
               "peak_mib_before": round(before), "peak_mib": round(_peak_mib()),
               "file_mib": round(out.stat().st_size / 2**20, 1), "tile": label_tile(cm.shape),
               "stored_chunks": len(cm.stored_chunks(0))}
    shutil.rmtree(root)
    out.unlink()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--patch", type=int, default=2048)
    parser.add_argument("--dense", action="store_true", help="also time the writer reading every tile")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="samlung-export-"))
    folder.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(one_case(folder, args.size, args.patch, args.dense)))
        return
    for dense in ([False, True] if args.dense else [False]):
        command = [sys.executable, __file__, "--child", "--size", str(args.size), "--patch", str(args.patch),
                   "--dir", str(folder)] + (["--dense"] if dense else [])
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        how = "every tile read (dense)" if dense else "stored chunks only"
        print(f"{result['size']:,} x {result['size']:,} px, {result['patch']:,} px patch, {how}: "
              f"{result['seconds']} s, peak RSS {result['peak_mib']} MiB (before export {result['peak_mib_before']} "
              f"MiB), file {result['file_mib']} MiB, tile {result['tile']} px, "
              f"{result['stored_chunks']} stored chunks")
    if args.dir is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
