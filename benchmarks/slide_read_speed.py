"""How fast the slide module serves the engine, compared with a plain tifffile decode.

Generates (once, cached in a folder) a JPEG pyramid of SIZE x SIZE pixels, then measures:
  - a plain threaded tifffile decode of level 0 (``page.asarray(maxworkers=THREADS)``);
  - decoding the same level through ``Slide.read_region`` in 1024 x 1024 requests overlapping by
    128 pixels, issued row by row from THREADS threads (as the engine's loaders do);
  - the same sweep through the OpenSlide path on the same file, and on a DICOM WSI made from it
    by wsidicomizer (cached beside it; --no-dicom skips it);
  - ``read_scaled`` at scale 2 over the same area (best level + antialiased resize);
  - opening time of the large file and of a small one (should not grow with size).
Each figure is the best of --repeat runs (the machine may be shared). Prints; asserts nothing.

    python benchmarks/slide_read_speed.py [--size 16384] [--threads 2] [--repeat 3] [--dir /tmp/samlung-bench]
                                          [--no-dicom]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from skimage import data

from napari_samlung.inference.tiling import TileGrid
from napari_samlung.slide import open_slide
from napari_samlung.slide.reader import open_slide_with_openslide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff


class TextureSource:
    """A lazily generated (size, size, 3) uint8 stained-tissue texture (the bundled IHC image,
    repeated with flips), so generating a big slide needs no big array."""

    def __init__(self, size: int) -> None:
        self.shape = (size, size, 3)
        self.dtype = np.dtype(np.uint8)
        self._base = data.immunohistochemistry()  # 512 x 512

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key[:2]
        rows = np.arange(*ys.indices(self.shape[0]))
        cols = np.arange(*xs.indices(self.shape[1]))
        flip_r = (rows // 512) % 2 == 1
        flip_c = (cols // 512) % 2 == 1
        r = np.where(flip_r, 511 - rows % 512, rows % 512)
        c = np.where(flip_c, 511 - cols % 512, cols % 512)
        return self._base[np.ix_(r, c)]


def make_slide(folder: Path, size: int) -> Path:
    path = folder / f"slide-read-{size}.tif"
    if not path.exists():
        t = time.perf_counter()
        write_pyramidal_tiff(path, TextureSource(size), mpp=0.25, tile=256, compression="jpeg", quality=90)
        print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
    return path


def make_dicom(slide: Path) -> Path:
    """The slide as DICOM WSI (every level, 256 px JPEG tiles), made once by wsidicomizer."""
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    folder = slide.with_suffix(".dicom")
    if not folder.exists():
        t = time.perf_counter()
        partial = slide.with_suffix(".dicom-partial")
        WsiDicomizer.convert(slide, partial, tile_size=256, preferred_source=SourceIdentifier.OPENSLIDE,
                             include_label=False, include_overview=False, include_thumbnail=False)
        partial.rename(folder)
        print(f"generated {folder} in {time.perf_counter() - t:.1f} s")
    return folder


def best_rate(run, megapixels: float, repeat: int) -> float:
    """Megapixels per second of the fastest of ``repeat`` calls of ``run``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return megapixels / min(times)


def requests(h: int, w: int, size: int = 1024, overlap: int = 128) -> list[tuple[int, int]]:
    """Top-left corners of the engine's tiles over an h x w level."""
    grid = TileGrid((0, 0, h, w), size, overlap)
    return [grid.tile_box(*rc)[:2] for rc in grid.tiles()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/samlung-bench"))
    parser.add_argument("--no-dicom", action="store_true", help="skip the DICOM WSI (made once, slowly)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = make_slide(args.dir, args.size)
    small = make_slide(args.dir, 1024)
    mpix = args.size * args.size / 1e6

    with tifffile.TiffFile(path) as tif:
        plain = best_rate(lambda: tif.pages[0].asarray(maxworkers=args.threads), mpix, args.repeat)
    print(f"tifffile threaded decode of level 0 ({args.threads} threads): {plain:.1f} MPix/s")

    def sweep_rate(opener, target: Path) -> tuple[float, int, int]:
        """Level-0 MPix/s of the engine's request sweep, with request and tile-decode counts."""
        stats: list = []

        def sweep() -> None:  # a fresh slide each time: an empty cache
            with opener(target) as slide, ThreadPoolExecutor(args.threads) as pool:
                boxes = requests(*slide.shape)
                list(pool.map(lambda yx: slide.read_region(0, *yx, 1024, 1024), boxes))
                stats.append((len(boxes), slide.cache_stats.decodes))

        return best_rate(sweep, mpix, args.repeat), *stats[-1]

    ours, count, decodes = sweep_rate(open_slide, path)
    tiles = (-(-args.size // 256)) ** 2
    print(f"read_region, 1024 px requests, 128 px overlap, {args.threads} threads: {ours:.1f} MPix/s "
          f"of level 0 ({count} requests, {decodes} tile decodes for {tiles} tiles)")
    print(f"ratio read_region / tifffile: {ours / plain:.2f}")
    other, _, decodes = sweep_rate(open_slide_with_openslide, path)
    print(f"same sweep through OpenSlide, same file: {other:.1f} MPix/s ({decodes} tile reads); "
          f"ratio OpenSlide / tifffile path: {other / ours:.2f}")
    if not args.no_dicom:
        dicom, _, decodes = sweep_rate(open_slide, make_dicom(path))
        print(f"same sweep through OpenSlide, DICOM WSI made from it: {dicom:.1f} MPix/s ({decodes} tile reads); "
              f"ratio DICOM / tifffile path: {dicom / ours:.2f}")

    scale = 2.0
    step = int(1024 * scale)
    starts = range(0, args.size - step + 1, step)
    boxes = [(y, x) for y in starts for x in starts]

    def scaled() -> None:
        with open_slide(path) as slide, ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda yx: slide.read_scaled(*yx, 1024, 1024, scale), boxes))

    rate = best_rate(scaled, len(boxes) * step * step / 1e6, args.repeat)
    print(f"read_scaled at scale {scale} (reads level 1, 1024 px outputs): {rate:.1f} level-0 MPix/s")

    for p in (small, path):
        with open_slide(p) as slide:
            shape = slide.shape
        rate = best_rate(lambda: open_slide(p).close(), 1.0, 20)
        print(f"open_slide {p.name} ({shape[1]} x {shape[0]}): {1000 / rate:.1f} ms")


if __name__ == "__main__":
    main()
