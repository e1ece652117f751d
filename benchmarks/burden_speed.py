"""Tumour burden (results/burden.py): time and peak memory of measuring a large class map.

Builds a class map of SIDE x SIDE pixels (chunks written directly, as the engine writes them) with
about a third of it tumour in blobs of many sizes, a tissue mask over four fifths of it, then
measures it as a run's end or a review's Apply does. Prints seconds, ms per chunk, megapixels per
second and the process's peak resident memory, against the map's size in memory.

    python benchmarks/burden_speed.py --side 16384
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_samlung.results import burden
from napari_samlung.results.classmap import ClassMap
from napari_samlung.slide import TissueMask


def build(root: Path, side: int, seed: int = 0) -> ClassMap:
    cm = ClassMap.create(root, (side, side), scale=2.0, num_classes=1,
                         slide={"path": "none", "name": "bench", "shape": [2 * side, 2 * side], "mpp": 0.25},
                         model={"preset": "tiny"})
    rng = np.random.default_rng(seed)
    ch, cw = cm.chunk
    for cy in range(-(-side // ch)):
        for cx in range(-(-side // cw)):
            noise = ndimage.zoom(rng.random((ch // 32, cw // 32)), 32, order=1)
            blobs = (noise > 0.62).astype(np.uint8)
            cm.write_chunk(0, cy, cx, blobs[:min(ch, side - cy * ch), :min(cw, side - cx * cw)])
    cm.update_meta(status="complete")
    return cm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384, help="class-map side in pixels (default 16384)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cm = build(Path(folder) / "bench.samlung", args.side)
        mask = np.zeros((1024, 1024), bool)
        mask[:, :820] = True
        tissue = TissueMask(mask, 2 * args.side / 1024)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        figures = burden.measure(cm, tissue)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    chunks = -(-args.side // cm.chunk[0]) * -(-args.side // cm.chunk[1])
    print(f"class map {args.side} x {args.side} px ({args.side ** 2 / 2 ** 20:.0f} MiB as uint8), {chunks} chunks")
    print(f"measured in {seconds:.2f} s: {1000 * seconds / chunks:.1f} ms per chunk, "
          f"{args.side ** 2 / seconds / 1e6:.0f} MPix/s")
    print(f"peak RSS {peak:.0f} MiB (before measuring {before:.0f} MiB)")
    print(figures.line())


if __name__ == "__main__":
    main()
