"""The npe2 manifest, the slide reader, the label writers and the sample slide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gui_support import (  # noqa: F401  (fixtures)
    PLUGIN,
    demo_slide,
    demo_source,
    isolated_config,
    layers_of,
    notifications,
    open_slide_layer,
    ready_widget,
    view,
    wait_for,
)
from classmap_factory import make_classmap
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.gui import _sample_data
from napari_samlung.gui._reader import get_reader
from napari_samlung.gui.layers import RESULTS, ROLE, SLIDE_PATH, ShownLevel, classmap_layer, mpp_frame
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import results_dir
from napari_samlung.labels import IGNORE, TUMOR
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff
from slide_factory import he_texture

pytestmark = pytest.mark.gui
MANIFEST = Path(__file__).resolve().parents[1] / "napari_samlung" / "napari.yaml"


def test_manifest_is_valid_and_declares_reader_widget_writers_and_sample():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    contributions = manifest.contributions
    (reader,) = contributions.readers
    assert {"*.svs", "*.ndpi", "*.tif", "*.tiff", "*.ome.tif"} <= set(reader.filename_patterns)
    assert reader.accepts_directories  # result folders and classmap.zarr
    assert [w.display_name for w in contributions.widgets] == ["SAM-Lung segmentation"]
    extensions = sorted(ext for w in contributions.writers for ext in w.filename_extensions)
    assert extensions == [".geojson", ".tif", ".tiff"]
    assert all(w.layer_types == ["labels"] for w in contributions.writers)
    assert [s.key for s in contributions.sample_data] == ["demo_slide"]


def test_pyramid_opens_as_a_lazy_multiscale_rgb_layer_in_micrometres(make_napari_viewer, demo_slide):
    viewer = make_napari_viewer()
    layer = open_slide_layer(viewer, demo_slide)
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    assert [tuple(level.shape) for level in layer.data] == [(1024, 1024, 3), (512, 512, 3), (256, 256, 3)]
    assert all(not isinstance(level, np.ndarray) for level in layer.data)  # read tile by tile when drawn
    assert tuple(layer.scale) == (0.5, 0.5) and [str(u) for u in layer.units] == ["micrometer"] * 2
    assert layer.metadata[ROLE] == "slide" and layer.metadata[SLIDE_PATH] == str(demo_slide.resolve())
    assert layer.metadata["mpp"] == 0.5


def test_the_real_svs_opens_at_its_microns_per_pixel(make_napari_viewer, real_svs):
    viewer = make_napari_viewer()
    layer = open_slide_layer(viewer, real_svs)
    assert not layer.multiscale and layer.data.shape == (2967, 2220, 3)
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert layer.metadata["format"] == "aperio-svs"


def test_real_svs_segments_visible_region_and_whole_slide_at_a_chosen_resolution(
        make_napari_viewer, qtbot, real_svs, tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, real_svs, tiny_checkpoint)
    (tmp_path / "project").mkdir()  # a chosen results folder must exist
    widget.segment.project_dir.set_text(str(tmp_path / "project"))  # the fixture folder stays untouched
    widget.segment.target_mpp.setValue(2.0)  # coarser than the checkpoint's 0.5: ~4 slide pixels per class pixel
    view(viewer, 700, 550, 300)
    widget.segment.visible_button.click()
    wait_for(qtbot, widget)
    root = results_dir(real_svs, tmp_path / "project")
    cm = ClassMap.open(root)
    assert cm.shape == (round(2967 * 0.499 / 2.0), round(2220 * 0.499 / 2.0))
    assert cm.status == "partial"
    widget.segment.full_button.click()
    wait_for(qtbot, widget)
    assert ClassMap.open(root).status == "complete" and not notifications("error")
    (labels,) = layers_of(viewer, "classmap")
    assert labels.scale[-1] == pytest.approx(0.499 * cm.scale)


@pytest.mark.parametrize("name, content", [
    ("notes.tif", b"this is not a TIFF"),
    ("empty.svs", b""),
    ("picture.png", None),
])
def test_files_the_plugin_cannot_open_get_no_reader(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        tifffile.imwrite(path, np.zeros((8, 8), np.uint8))  # readable, but not a file type we claim
    else:
        path.write_bytes(content)
    assert get_reader(str(path)) is None
    assert get_reader([str(path), str(path)]) is None


def test_results_beside_the_slide_open_with_it(demo_slide):
    cm = ClassMap.create(results_dir(demo_slide), (1024, 1024), scale=1.0, num_classes=1, slide={"mpp": 0.5},
                         model={})
    cm.write((0, 0, 10, 10), np.ones((10, 10), np.uint8))
    cm.add_reviewed((0, 0, 10, 10))
    layers = get_reader(str(demo_slide))(str(demo_slide))
    assert [kwargs["metadata"][ROLE] for _, kwargs, _ in layers] == ["slide", "classmap", "reviewed"]
    data, kwargs, kind = layers[1]
    assert kind == "labels" and kwargs["metadata"][RESULTS] == str(cm.root.resolve())
    assert np.asarray(data[0][:10, :10]).tolist() == np.ones((10, 10)).tolist()


def test_sample_slide_is_generated_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(_sample_data, "DEMO_SHAPE", (512, 512))
    (data, kwargs, kind), = _sample_data.demo_slide()
    path = tmp_path / "cache" / _sample_data.DEMO_NAME
    assert kind == "image" and kwargs["rgb"] and tuple(data[0].shape) == (512, 512, 3)
    assert kwargs["metadata"][SLIDE_PATH] == str(path.resolve())
    stamp = path.stat().st_mtime_ns
    _sample_data.demo_slide()
    assert path.stat().st_mtime_ns == stamp


def test_writers_save_the_segmentation_as_label_tiff_and_geojson(make_napari_viewer, qtbot, demo_slide,
                                                                  tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    widget.segment.full_button.click()
    wait_for(qtbot, widget)
    cm = ClassMap.open(results_dir(demo_slide))
    (labels,) = layers_of(viewer, "classmap")

    labels.save(str(tmp_path / "seg.tif"), plugin=PLUGIN)
    with tifffile.TiffFile(tmp_path / "seg.tif") as tif:
        level0 = tif.series[0].levels[0]
        assert level0.keyframe.is_tiled and level0.keyframe.compression == 8  # zlib: lossless
        assert np.array_equal(level0.asarray(), cm.read((0, 0, 1024, 1024)))

    labels.save(str(tmp_path / "seg.geojson"), plugin=PLUGIN)
    features = json.loads((tmp_path / "seg.geojson").read_text())["features"]
    assert features and features[0]["properties"]["objectType"] == "annotation"

    plain = viewer.add_labels(np.zeros((64, 96), np.uint8), scale=(0.25, 0.25), units=("um", "um"))
    plain.data[8:24, 16:48] = TUMOR
    plain.save(str(tmp_path / "plain.tif"), plugin=PLUGIN)
    with tifffile.TiffFile(tmp_path / "plain.tif") as tif:
        assert np.array_equal(tif.series[0].levels[0].asarray(), plain.data)
        x_resolution = tif.pages[0].tags["XResolution"].value
        assert x_resolution[0] / x_resolution[1] == pytest.approx(1e4 / 0.25)  # pixels per cm
    plain.save(str(tmp_path / "plain.geojson"), plugin=PLUGIN)
    (feature,) = json.loads((tmp_path / "plain.geojson").read_text())["features"]
    xs, ys = zip(*feature["geometry"]["coordinates"][0][0])
    assert (min(xs), max(xs), min(ys), max(ys)) == (16, 48, 8, 24)  # the layer's pixel edges


@pytest.fixture
def results(tmp_path) -> ClassMap:
    """Results of a 0.25 um/px slide at 2 slide pixels per class-map pixel, with a reviewed region."""
    labels = np.zeros((600, 700), np.uint8)
    labels[100:300, 200:500] = TUMOR
    labels[:50, :60] = IGNORE
    cm = make_classmap(tmp_path / "case.samlung", labels, scale=2.0, slide_mpp=0.25,
                       slide_path=str(tmp_path / "case.svs"))
    cm.add_reviewed((100, 200, 50, 50))
    return cm


def _class_names(layer) -> dict[int, str]:
    return dict(zip(layer.features["index"], layer.features["class"]))


@pytest.mark.parametrize("name", ["labels.tif", "labels.ome.tif"])
def test_label_tiff_opens_as_multiscale_labels_where_the_class_map_lies(make_napari_viewer, results, tmp_path,
                                                                       name):
    path = classmap_to_label_tiff(results, tmp_path / name, tile=64)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert type(layer).__name__ == "Labels" and layer.multiscale and len(layer.data) == 5
    assert all(isinstance(level, ShownLevel) for level in layer.data)  # read lazily, tile by tile
    np.testing.assert_array_equal(np.asarray(layer.data[0][80:320, 180:520]), results.read((80, 180, 240, 340)))
    np.testing.assert_array_equal(np.asarray(layer.data[2][:]), results.read((0, 0, 150, 175), level=2))
    _, expected, _ = classmap_layer(results, mpp_frame(0.25), tmp_path / "case.svs", "case")
    assert tuple(layer.scale) == pytest.approx(expected["scale"]) == (0.5, 0.5)
    assert tuple(layer.translate) == pytest.approx(expected["translate"])  # over the slide, as the widget puts it
    assert [str(u) for u in layer.units] == ["micrometer"] * 2
    assert _class_names(layer) == {0: "Background", 1: "Tumor", 255: "Not reviewed"}
    assert layer.colormap.map(np.array([0]))[0][3] == 0  # background clear over the tissue


def test_a_plain_slide_tiff_still_opens_as_a_slide(make_napari_viewer, tmp_path):
    path = write_pyramidal_tiff(tmp_path / "slide.tif", he_texture(256, 320), mpp=0.5, tile=64, compression="zlib",
                                description="napari-samlung wrote this slide")
    viewer = make_napari_viewer()
    layer = open_slide_layer(viewer, path)
    assert type(layer).__name__ == "Image" and layer.rgb and layer.metadata[ROLE] == "slide"


@pytest.mark.parametrize("inside", ["", "classmap.zarr"])
def test_results_folder_or_its_classmap_zarr_opens_as_labels_in_micrometres(make_napari_viewer, results, inside):
    viewer = make_napari_viewer()
    layers = viewer.open(str(results.root / inside), plugin=PLUGIN)
    assert [type(layer).__name__ for layer in layers] == ["Labels", "Shapes"]  # the class map, reviewed regions
    labels = layers[0]
    assert labels.multiscale and len(labels.data) == len(results.levels) == 3
    assert all(isinstance(level, ShownLevel) for level in labels.data)
    np.testing.assert_array_equal(np.asarray(labels.data[1][:]), results.read((0, 0, 300, 350), level=1))
    assert tuple(labels.scale) == pytest.approx((0.5, 0.5)) and tuple(labels.translate) == pytest.approx((0.125,) * 2)
    assert [str(u) for u in labels.units] == ["micrometer"] * 2
    assert _class_names(labels) == {0: "Background", 1: "Tumor", 255: "Not reviewed"}
    assert labels.metadata[ROLE] == "classmap" and labels.metadata[RESULTS] == str(results.root.resolve())


def test_a_damaged_chunk_of_opened_results_shows_as_not_reviewed(make_napari_viewer, results):
    results.chunk_path(0, 0, 0).write_bytes(b"garbage")
    viewer = make_napari_viewer()
    labels = viewer.open(str(results.root), plugin=PLUGIN)[0]
    assert (np.asarray(labels.data[0][100:110, 200:210]) == IGNORE).all()


def test_folders_that_are_not_results_get_no_reader(tmp_path, results):
    (tmp_path / "empty").mkdir()
    ClassMap.open(results.root, mode="r+").group.attrs["samlung"] = {"format": "something-else"}
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(results.root)) is None
    assert get_reader(str(results.root / "classmap.zarr")) is None
