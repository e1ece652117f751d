"""The class map as OME-Zarr 0.5 labels: validated by ome-zarr-models, opened by napari-ome-zarr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from classmap_factory import make_classmap
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image_label import ImageLabel

from napari_samlung.labels import IGNORE, TUMOR
from napari_samlung.results.classmap import ClassMap


@pytest.fixture
def cm(tmp_path) -> ClassMap:
    """A 0.25 um/px slide's results at 2 slide pixels per class-map pixel; noise, so that any sample
    taken from the wrong place shows."""
    labels = np.random.default_rng(0).integers(0, 2, (600, 700)).astype(np.uint8)
    labels[:40, :50] = IGNORE
    return make_classmap(tmp_path / "case.samlung", labels, scale=2.0, slide_mpp=0.25)


def _group(cm: ClassMap) -> zarr.Group:
    return zarr.open_group(cm.root / "classmap.zarr", mode="r")


def test_class_map_validates_as_an_ome_zarr_image_label_beside_its_own_metadata(cm):
    model = open_ome_zarr(_group(cm))
    assert isinstance(model, ImageLabel)
    ome = model.attributes.ome
    assert ome.version == "0.5"
    (multiscale,) = ome.multiscales
    assert [(a.name, a.type, a.unit) for a in multiscale.axes] == [("y", "space", "micrometer"),
                                                                   ("x", "space", "micrometer")]
    assert [d.path for d in multiscale.datasets] == ["0", "1", "2"]
    label = ome.image_label
    assert {c.label_value: tuple(c.rgba) for c in label.colors}[TUMOR] == (200, 0, 0, 255)
    assert {c.label_value: c.rgba[3] for c in label.colors}[0] == 0  # background clear
    names = {p.label_value: p.model_extra["class"] for p in label.properties}
    assert names == {0: "Background", 1: "Tumor", 255: "Not reviewed"}
    assert _group(cm).attrs["samlung"]["format"] == "samlung-classmap"


def test_each_level_sits_where_its_samples_were_taken(cm):
    """Level k holds level-0 pixel (i * 2**k, j * 2**k): mapping a level-k pixel to micrometres with
    its transforms and back through level 0's lands on a level-0 pixel holding the same label."""
    (multiscale,) = open_ome_zarr(_group(cm)).attributes.ome.multiscales
    transforms = [(np.array(d.coordinateTransformations[0].scale), np.array(d.coordinateTransformations[1].translation))
                  for d in multiscale.datasets]
    (scale0, shift0), level0 = transforms[0], cm.read((0, 0, *cm.shape))
    assert tuple(scale0) == pytest.approx((0.5, 0.5))  # 0.25 um/px x 2
    assert tuple(shift0) == pytest.approx((0.125, 0.125))  # a class-map pixel's centre over the slide's pixels
    rng = np.random.default_rng(1)
    for k, (scale, shift) in enumerate(transforms[1:], start=1):
        level = cm.read((0, 0, *cm.levels[k].shape), level=k)
        index = np.stack([rng.integers(0, n, 200) for n in level.shape], axis=1)
        where = index * scale + shift
        back = (where - shift0) / scale0
        assert np.allclose(back, np.round(back))
        i = np.round(back).astype(int)
        np.testing.assert_array_equal(level[index[:, 0], index[:, 1]], level0[i[:, 0], i[:, 1]])


def test_napari_ome_zarr_opens_the_class_map_as_labels_at_its_scale(cm):
    from napari_ome_zarr import napari_get_reader

    path = str(cm.root / "classmap.zarr")
    ((data, kwargs, kind),) = napari_get_reader(path)(path)
    assert kind == "labels"
    assert [tuple(level.shape) for level in data] == [tuple(level.shape) for level in cm.levels]
    np.testing.assert_array_equal(np.asarray(data[1]), cm.read((0, 0, 300, 350), level=1))
    assert kwargs["scale"] == pytest.approx([0.5, 0.5]) and kwargs["units"] == ("micrometer", "micrometer")
    assert dict(zip(kwargs["properties"]["index"], kwargs["properties"]["class"]))[TUMOR] == "Tumor"
    # napari-ome-zarr 0.10 takes only a dataset's first transform: the quarter-micrometre
    # translation is in the metadata (validated above) but not in its layer.


def test_a_class_map_made_before_the_ome_metadata_opens_and_gains_it_when_next_written(cm):
    store = cm.root / "classmap.zarr"
    group = zarr.open_group(store, mode="r+")
    del group.attrs["ome"]
    for k in range(len(cm.levels)):  # as ClassMap.create made them before: no dimension names
        meta = json.loads((store / str(k) / "zarr.json").read_text())
        del meta["dimension_names"]
        (store / str(k) / "zarr.json").write_text(json.dumps(meta))
    old = ClassMap.open(cm.root, mode="r+")
    assert "ome" not in _group(old).attrs and old.read((0, 0, 40, 50)).tolist() == [[IGNORE] * 50] * 40
    with pytest.raises(RuntimeError):
        open_ome_zarr(_group(old))
    old.update_meta(status="complete")
    assert isinstance(open_ome_zarr(_group(old)), ImageLabel)
    np.testing.assert_array_equal(ClassMap.open(cm.root).read((0, 0, 600, 700)), cm.read((0, 0, 600, 700)))


def test_the_ome_scale_follows_the_slides_microns_per_pixel(cm, tmp_path):
    cm.record_slide_mpp(0.3, "user")
    (multiscale,) = open_ome_zarr(_group(cm)).attributes.ome.multiscales
    assert multiscale.datasets[1].coordinateTransformations[0].scale == pytest.approx([1.2, 1.2])
    unknown = make_classmap(tmp_path / "unknown.samlung", np.zeros((300, 300), np.uint8), scale=2.0, slide_mpp=None)
    (multiscale,) = open_ome_zarr(_group(unknown)).attributes.ome.multiscales
    assert [a.unit for a in multiscale.axes] == [None, None]  # level-0 slide pixels, not a length
    assert multiscale.datasets[0].coordinateTransformations[0].scale == pytest.approx([2.0, 2.0])
