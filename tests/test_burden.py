"""Tumour burden: figures of a class map of known content, its metadata, `samlung summary`, the widget.

The known map (class-map pixels of 0.5 µm, so 40,000 px = 0.01 mm², the default minimum region):

- A, tumour 200 x 250 = 50,000 px across the corner of four 1024 px chunks: a region;
- U, tumour 44,800 px whose two arms meet only in the chunk row below: one region, although no
  chunk holds 40,000 px of it;
- B, tumour 100 x 100 = 10,000 px: tumour area, but too small to be a region;
- a 200 x 300 patch of 255 (not reviewed) inside the tissue: counted nowhere;
- columns 1200: not segmented (the run's box ends there) except a reviewed region R, where a
  200 x 200 tumour was corrected to 60 x 100 = 6,000 px; the unsegmented tumour at the top right
  counts nowhere;
- the tissue mask covers columns 0:1000 (level-0 x below 2000).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from classmap_factory import make_classmap
from scipy import ndimage

from gui_support import demo_slide, demo_source, isolated_config  # noqa: F401  (fixtures)
from napari_samlung.cli import main
from napari_samlung.results import burden
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.drafts import start_review
from napari_samlung.results.folders import results_dir
from napari_samlung.slide import TissueMask, open_slide
from napari_samlung.synthetic import write_demo_slide

SHAPE = (1100, 1300)
REVIEWED = (400, 1050, 300, 250)  # rows 400:700, cols 1050:1300
TUMOUR_PX = 50_000 + 44_800 + 10_000 + 6_000
PX_UM2 = 0.5 ** 2


def known_labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[880:1080, 900:1150] = 1  # A
    labels[700:1050, 100:160] = 1  # U: left arm
    labels[700:1050, 300:360] = 1  # U: right arm
    labels[1030:1050, 160:300] = 1  # U: bottom, below chunk row 0
    labels[100:200, 100:200] = 1  # B
    labels[100:300, 600:900] = 255
    labels[450:650, 1100:1300] = 1  # corrected by the review
    labels[0:100, 1200:1300] = 1  # outside every segmented box
    return labels


def known_classmap(root: Path, *, slide_mpp: float | None = 0.25, scale: float = 2.0) -> ClassMap:
    """The known map, segmented up to column 1200, with R reviewed through a real draft."""
    cm = make_classmap(root, known_labels(), scale=scale, slide_mpp=slide_mpp)
    cm.update_meta(status="partial", segmented=[{"box": [0, 0, 1100, 1200]}])
    draft = start_review(cm, REVIEWED)
    corrected = np.zeros(REVIEWED[2:], np.uint8)
    corrected[100:160, 100:200] = 1  # rows 500:560, cols 1150:1250 of the map
    draft.data[...] = corrected
    draft.apply()
    return ClassMap.open(root)


def known_tissue() -> TissueMask:
    mask = np.zeros((110, 130), bool)  # 20 level-0 px per mask pixel: the slide is 2200 x 2600
    mask[:, :100] = True
    return TissueMask(mask, 20.0)


def test_known_map_gives_known_figures_across_chunk_borders_with_reviews_and_255_left_out(tmp_path):
    cm = known_classmap(tmp_path / "k.samlung")
    assert cm.chunk == (1024, 1024)
    figures = burden.measure(cm, known_tissue())
    measured = 1100 * 1200 + 300 * 100 - 200 * 300
    tissue = (1100 * 1000 - 200 * 300) + 200 * 150 + 6_000  # mask minus 255, plus tumour right of it
    assert figures.tumour_px == TUMOUR_PX
    assert figures.measured_px == measured
    assert figures.tissue_px == tissue
    assert figures.regions == 2  # A and U; B and the corrected region are smaller than 0.01 mm²
    assert figures.tumour_mm2 == pytest.approx(TUMOUR_PX * PX_UM2 / 1e6)
    assert figures.tissue_mm2 == pytest.approx(tissue * PX_UM2 / 1e6)
    assert figures.tumour_fraction == pytest.approx(TUMOUR_PX / tissue)
    assert figures.segmented_fraction == pytest.approx((1100 * 1000 - 200 * 300) / (1100 * 1000))
    assert figures.line() == (f"Tumour 0.0277 mm² of 0.269 mm² tissue ({100 * TUMOUR_PX / tissue:.0f} %), "
                              f"2 regions ≥ 0.01 mm²; {100 * (1100 * 1000 - 200 * 300) / (1100 * 1000):.0f} % "
                              "of the tissue segmented")


def test_region_areas_and_threshold_follow_the_microns_per_pixel(tmp_path):
    base = burden.measure(known_classmap(tmp_path / "a.samlung"), None)
    coarse = burden.measure(known_classmap(tmp_path / "b.samlung", slide_mpp=1.0), None)  # 2 µm px
    rescaled = burden.measure(known_classmap(tmp_path / "c.samlung", slide_mpp=0.125, scale=4.0), None)
    assert coarse.tumour_mm2 == pytest.approx(16 * base.tumour_mm2)
    assert (base.regions, coarse.regions) == (2, 4)  # at 4 µm² per px, B and the correction reach 0.01 mm²
    assert (rescaled.tumour_mm2, rescaled.regions) == (pytest.approx(base.tumour_mm2), base.regions)
    assert base.tissue_px is None and base.tumour_fraction is None and "tissue unknown" in base.line()
    larger = burden.measure(known_classmap(tmp_path / "d.samlung"), None, min_region_area_um2=12_000)
    assert larger.regions == 1  # U (11,200 µm²) drops out, A (12,500 µm²) stays


def test_without_microns_per_pixel_the_fraction_stays_and_areas_are_unknown(tmp_path):
    figures = burden.measure(known_classmap(tmp_path / "k.samlung", slide_mpp=None), known_tissue())
    assert figures.tumour_mm2 is None and figures.regions is None
    assert figures.tumour_fraction == pytest.approx(burden.measure(
        known_classmap(tmp_path / "m.samlung"), known_tissue()).tumour_fraction)
    assert "areas unknown" in figures.line()


@pytest.mark.parametrize("block", [(17, 23), (150, 7), (1, 300)])
def test_block_by_block_counting_equals_labelling_the_whole_map(tmp_path, block):
    rng = np.random.default_rng(7)
    labels = (ndimage.uniform_filter(rng.random((150, 300)), 5) > 0.53).astype(np.uint8)
    cm = make_classmap(tmp_path / "r.samlung", labels, scale=2.0, slide_mpp=0.25)
    components, _ = ndimage.label(labels)
    sizes = np.bincount(components.ravel())[1:]
    for min_px in (1, 40):
        figures = burden.measure(cm, None, min_region_area_um2=min_px * PX_UM2, block=block)
        assert figures.regions == int((sizes >= min_px).sum())
        assert figures.tumour_px == int(labels.sum())


def test_an_applied_review_leaves_the_figures_stale_until_measured_again(tmp_path):
    cm = make_classmap(tmp_path / "k.samlung", known_labels(), slide_mpp=0.25)
    before = burden.update_metadata(cm.root)
    assert burden.stored(ClassMap.open(cm.root)) == before
    draft = start_review(cm, REVIEWED)
    draft.data[...] = 0
    draft.apply()  # quick, under the folder's lock; measuring follows it (the widget's Apply does)
    assert burden.stored(ClassMap.open(cm.root)) is None
    after = burden.update_metadata(cm.root)
    assert after.tumour_px == before.tumour_px - 200 * 200  # the tumour the review removed
    assert burden.stored(ClassMap.open(cm.root)) == after
    assert ClassMap.open(cm.root).meta["burden"]["tumour_mm2"] == pytest.approx(after.tumour_mm2)


def test_a_map_changed_while_measuring_is_measured_again_before_storing(tmp_path):
    cm = make_classmap(tmp_path / "c.samlung", known_labels(), slide_mpp=0.25)
    other = ClassMap.open(cm.root, mode="r+")  # another writer, between two blocks of the measuring
    changes = []

    def change_once(done: int, total: int) -> None:
        if not changes:
            changes.append(other.add_reviewed((0, 0, 10, 10)))

    figures = burden.update_metadata(cm.root, progress=change_once)
    now = ClassMap.open(cm.root)
    assert changes and figures.basis == burden.basis(now)  # describes the map after the change
    assert burden.stored(now) == figures


def test_the_tissue_mask_is_kept_so_figures_refresh_without_the_slide(tmp_path):
    slide_path = tmp_path / "slides" / "case.svs"
    slide_path.parent.mkdir()
    write_demo_slide(slide_path, (512, 512), mpp=0.5)
    labels = np.zeros((512, 512), np.uint8)
    labels[100:300, 100:300] = 1
    cm = make_classmap(tmp_path / "case.samlung", labels, scale=1.0, slide_mpp=0.5, slide_path=str(slide_path))
    with open_slide(slide_path) as slide:
        first = burden.update_metadata(cm.root, slide)
        expected = burden.measure(cm, slide.tissue(burden.TISSUE_PARAMS))
    assert first.tissue_px == expected.tissue_px and 0 < first.tumour_fraction < 1
    slide_path.unlink()  # the slide moved away: the kept mask serves
    again = burden.update_metadata(cm.root)
    assert (again.tissue_px, again.detected_tissue_px) == (first.tissue_px, first.detected_tissue_px)


def test_summary_writes_one_row_per_slide_and_names_folders_without_a_class_map(tmp_path, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    known_classmap(batch / "k.samlung")
    make_classmap(batch / "s.samlung", known_labels()[:300, :300], slide_path="/data/slide-B.svs")
    (tmp_path / "empty").mkdir()
    table = tmp_path / "summary.csv"
    status = main(["summary", str(batch), str(tmp_path / "empty"), "--csv", str(table),
                   "--min-region-area", "0.002mm2"])
    done = capsys.readouterr()
    assert status == 2
    assert done.err.strip().splitlines() == [
        f"samlung summary: error: {tmp_path / 'empty'}: neither a result folder (no classmap.zarr) nor a "
        "folder holding result folders (*.samlung)"]
    rows = {row["slide"]: row for row in csv.DictReader(table.open())}
    assert set(rows) == {"slide-A", "slide-B"}
    known = ClassMap.open(batch / "k.samlung").meta["burden"]
    assert known["min_region_area_um2"] == 2_000
    assert float(rows["slide-A"]["tumour_area_mm2"]) == pytest.approx(TUMOUR_PX * PX_UM2 / 1e6)
    assert int(rows["slide-A"]["tumour_regions"]) == 3  # B (2,500 µm²) counts at 0.002 mm²
    assert rows["slide-A"]["reviewed_regions"] == "1" and rows["slide-A"]["tissue_area_mm2"] == ""
    assert "slide-A: Tumour 0.0277 mm² (tissue unknown" in done.out


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "0.01 km2"])
def test_bad_minimum_region_areas_are_refused_in_one_line(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["summary", str(tmp_path), "--min-region-area", value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--min-region-area" in err and len(err.splitlines()) == 1


@pytest.mark.gui
@pytest.mark.slow
def test_the_widget_shows_the_burden_after_a_run_and_after_apply(make_napari_viewer, qtbot, demo_slide,
                                                                 tiny_checkpoint):
    from gui_support import layers_of, ready_widget, wait_for

    viewer = make_napari_viewer()
    _layer, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    widget.segment.full_button.click()
    wait_for(qtbot, widget)
    root = results_dir(demo_slide)
    after_run = burden.stored(ClassMap.open(root))
    assert after_run is not None and after_run.tissue_px  # measured with the slide's tissue mask
    assert widget.segment.burden.text() == after_run.line() and " mm² tissue (" in after_run.line()

    shapes = viewer.add_shapes([[[0, 0], [0, 100], [100, 100], [100, 0]]], shape_type="rectangle")
    viewer.layers.selection.active = shapes  # 100 µm: level-0 pixels 0..200 of the 0.5 µm/px slide
    widget.review.review_button.click()
    wait_for(qtbot, widget)
    (draft,) = layers_of(viewer, "draft")
    tumour_before, size = int((np.asarray(draft.data) == 1).sum()), draft.data.size
    draft.data[...] = 1  # all tumour
    widget.review.apply_button.click()
    wait_for(qtbot, widget)
    after_apply = burden.stored(ClassMap.open(root))
    assert after_apply is not None
    assert after_apply.tumour_px == after_run.tumour_px + size - tumour_before
    assert widget.segment.burden.text() == after_apply.line()
