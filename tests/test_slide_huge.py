"""Huge single-level images and damaged tile tables: bounded reads, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samlung.slide import SlideError, open_slide
from napari_samlung.slide.reader import Slide
from napari_samlung.slide.tissue import STREAM_BLOCK, WHOLE_READ_PIXELS


def _sparse_tiff(path, side: int, tile: int = 1024, tissue: int = 1):
    """A TIFF declaring side x side pixels whose top-left ``tissue`` x ``tissue`` tiles are written
    (H&E-ish pink); the other tiles are sparse (never written, read as white)."""
    per_row = -(-side // tile)
    pink = np.full((tile, tile, 3), (200, 120, 170), np.uint8)

    def tiles():
        for r in range(per_row):
            for c in range(per_row):
                yield pink if r < tissue and c < tissue else None

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                 compression="zlib")
    return path


@pytest.fixture
def reads(monkeypatch):
    """The largest single read (pixels) that tissue detection asks of the slide."""
    largest = [0]
    for name in ("read_region", "read_scaled"):
        original = getattr(Slide, name)

        def counted(self, *args, original=original, **kwargs):
            out = original(self, *args, **kwargs)
            largest[0] = max(largest[0], out.shape[0] * out.shape[1])
            return out

        monkeypatch.setattr(Slide, name, counted)
    return largest


@pytest.mark.slow
def test_tissue_of_a_million_pixel_wide_single_level_image_is_sampled(tmp_path, reads):
    with open_slide(_sparse_tiff(tmp_path / "huge.tif", 1_000_000, tissue=40)) as slide:
        assert slide.level_shapes == [(1_000_000, 1_000_000)]
        mask = slide.tissue()
    assert max(mask.mask.shape) <= 64 and reads[0] <= 64
    assert mask.mask[0, 0] and not mask.mask[-1, -1]  # the written corner is tissue, the rest glass


def test_a_large_level_is_read_block_by_block(tmp_path, reads):
    with open_slide(_sparse_tiff(tmp_path / "large.tif", 9000)) as slide:
        assert 9000 * 9000 > WHOLE_READ_PIXELS
        slide.tissue()
    assert 0 < reads[0] <= (STREAM_BLOCK + 64) ** 2  # a block and its resampling margin


def test_a_damaged_tile_table_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 180, np.uint8), tile=(128, 128), compression="zlib",
                     photometric="rgb")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for name in ("TileOffsets", "TileByteCounts"):
            tag = tif.pages[0].tags[name]
            tag.overwrite(tag.value[:-1])
    with pytest.raises(SlideError, match="damaged tile table") as refused:
        open_slide(path).read_region(0, 0, 0, 512, 512)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
