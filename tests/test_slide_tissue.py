"""The tissue mask finds the tissue, drops specks, and never drops tissue that fills a slide."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samlung.slide import TissueMask, TissueParams, open_slide, tissue_mask
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff
from slide_factory import he_texture, slide_with_tissue, tissue_everywhere

H, W = 1200, 1600
PARAMS = TissueParams(overview_size=400)  # a 300 x 400 overview, 4 level-0 pixels per mask pixel


def write(folder, image, name="slide.tif"):
    return write_pyramidal_tiff(folder / name, image, mpp=0.5, tile=128, compression="jpeg")


@pytest.fixture(scope="module")
def two_pieces(tmp_path_factory):
    """The mask of a slide with two pieces of tissue on glass, and the true tissue."""
    image, truth = slide_with_tissue(H, W)
    with open_slide(write(tmp_path_factory.mktemp("tissue"), image)) as slide:
        return tissue_mask(slide, PARAMS), truth


def upsampled(mask: TissueMask, shape) -> np.ndarray:
    rows = (np.arange(shape[0]) // mask.downsample).astype(int)
    cols = (np.arange(shape[1]) // mask.downsample).astype(int)
    return mask.mask[np.ix_(rows, cols)]


def test_mask_covers_the_tissue_and_little_glass(two_pieces):
    mask, truth = two_pieces
    assert mask.mask.shape == (300, 400) and mask.downsample == 4
    found = upsampled(mask, (H, W))
    assert found[truth].mean() > 0.995  # tissue is never skipped
    assert found[~truth].mean() < 0.05  # glass mostly is (the margin adds a rim)


def test_tissue_fraction_of_boxes(two_pieces):
    mask, _ = two_pieces
    assert mask.fraction(0, 1400, 100, 100) == 0  # glass corner
    assert mask.fraction(380, 420, 64, 64) == 1  # the middle of the first piece
    assert mask.fraction(-500, -500, 100, 100) == 0  # outside the slide
    assert mask.fraction(10, 10, 0, 5) == 0
    y, x = 840, 1152  # centre of the second piece
    assert mask.fraction(y - 50, x - 50, 100, 100) == 1
    assert mask.fraction(y - 50, W - 50, 100, 100) == 0
    assert mask.fraction(0, 0, H, W) == pytest.approx(mask.mask.mean())
    # this box also touches a row and a column of mask pixels past the slide, which count as glass
    assert mask.fraction(2, 2, H, W) == pytest.approx(mask.mask.sum() / (301 * 401))


def test_slide_that_is_all_tissue_is_all_kept(tmp_path):
    with open_slide(write(tmp_path, tissue_everywhere(H, W))) as slide:
        mask = tissue_mask(slide, PARAMS)
    assert mask.mask.all() and mask.glass is None
    assert mask.fraction(H - 100, 600, 200, 200) == 0.5  # half the box lies below the slide


def test_real_tumor_regions_are_tissue(tmp_path, ocdc_dir):
    import imagecodecs

    names = sorted(p.name for p in (ocdc_dir / "images").iterdir())[:4]
    images = [imagecodecs.imread(ocdc_dir / "images" / n) for n in names]
    tumor = [imagecodecs.imread(ocdc_dir / "masks" / n) > 127 for n in names]
    tumor = [t if t.ndim == 2 else t[..., 0] for t in tumor]
    mosaic = np.concatenate([np.concatenate(images[:2], 1), np.concatenate(images[2:], 1)], 0)
    truth = np.concatenate([np.concatenate(tumor[:2], 1), np.concatenate(tumor[2:], 1)], 0)
    with open_slide(write(tmp_path, mosaic)) as slide:
        mask = tissue_mask(slide, TissueParams(overview_size=320))
    assert truth.any() and upsampled(mask, truth.shape)[truth].mean() > 0.99


def test_blank_glass_has_no_tissue(tmp_path):
    glass = np.random.default_rng(0).normal(236, 3, (H, W, 3)).clip(0, 255).astype(np.uint8)
    with open_slide(write(tmp_path, glass)) as slide:
        assert not tissue_mask(slide, PARAMS).mask.any()


def test_specks_smaller_than_the_minimum_area_are_dropped(tmp_path):
    image, truth = slide_with_tissue(H, W)
    speck = he_texture(16, 16, seed=5)
    for y, x in [(50, 1300), (1100, 100), (600, 1500)]:  # 16 x 16 px = 64 um^2 of tissue each
        image[y: y + 16, x: x + 16] = speck
    with open_slide(write(tmp_path, image)) as slide:
        kept = tissue_mask(slide, PARAMS)
        found = tissue_mask(slide, TissueParams(overview_size=400, min_area_um2=0))
    for y, x in [(50, 1300), (1100, 100), (600, 1500)]:
        assert kept.fraction(y, x, 16, 16) == 0
        assert found.fraction(y, x, 16, 16) > 0


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="color_distance"):
        TissueParams(color_distance=300)
    with pytest.raises(ValueError, match="overview_size"):
        TissueParams(overview_size=4)
