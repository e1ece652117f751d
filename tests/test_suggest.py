"""Where to look next: fields ranked by mean confidence, reviewed and unsegmented fields left out,
and ``samlung suggest`` with its listing, GeoJSON and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from classmap_factory import make_classmap
from napari_samlung.cli import main
from napari_samlung.inference.suggestions import field_grid, ranked_fields, suggest
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import ConfidenceMap

TILE, STRIDE = 64, 56  # make_classmap's model tile; the engine's default overlap is tile // 8
SHAPE = (232, 288)  # 4 x 5 fields
CERTAIN = 230
LOW = {(1, 3): 20, (2, 1): 60, (0, 4): 100}  # field (row, col) -> value of a blob inside it alone


def blob(r: int, c: int) -> tuple[slice, slice]:
    """Rows and columns inside field (r, c) that no other field covers (its neighbours overlap 8 px)."""
    return slice(r * STRIDE + 12, r * STRIDE + 52), slice(c * STRIDE + 12, c * STRIDE + 52)


def field_box(r: int, c: int) -> tuple[int, int, int, int]:
    y, x = r * STRIDE, c * STRIDE
    return y, x, min(TILE, SHAPE[0] - y), min(TILE, SHAPE[1] - x)


@pytest.fixture
def results(tmp_path):
    """A complete class map (scale 2) with a confidence map of known content: certain everywhere but
    three blobs, and one field (3, 0) never segmented."""
    cm = make_classmap(tmp_path / "slide.samlung", np.zeros(SHAPE, np.uint8), tile=TILE)
    values = np.full(SHAPE, CERTAIN, np.uint8)
    for (r, c), value in LOW.items():
        values[blob(r, c)] = value
    values[3 * STRIDE:, :TILE] = 0  # field (3, 0): no model ran there
    confidence = ConfidenceMap.create_for(cm)
    confidence.write((0, 0, *SHAPE), values)
    return cm, confidence, values


def mean_of(values: np.ndarray, r: int, c: int) -> float:
    y, x, h, w = field_box(r, c)
    part = values[y:y + h, x:x + w]
    return (part[part > 0].mean() - 1) / 254


def test_fields_are_the_engines_tiles_ranked_by_mean_confidence_lowest_first(results):
    cm, confidence, values = results
    assert field_grid(cm).shape == (4, 5)
    fields = suggest(cm, confidence, 4)
    expected = sorted(LOW, key=LOW.get)
    assert [f.box for f in fields[:3]] == [field_box(*rc) for rc in expected]
    for field, rc in zip(fields, expected):
        assert field.confidence == pytest.approx(mean_of(values, *rc), abs=1e-6)
        assert field.slide_box == tuple(2 * v for v in field.box)  # level-0 pixels: the map's scale is 2
    assert fields[3].confidence == pytest.approx((CERTAIN - 1) / 254)  # then the certain ones, top left first
    assert fields[3].box == (0, 0, TILE, TILE)


def test_unsegmented_fields_are_never_suggested(results):
    cm, confidence, _ = results
    boxes = [f.box for f in ranked_fields(cm, confidence)]
    assert field_box(3, 0) not in boxes and len(boxes) == 4 * 5 - 1


def test_a_reviewed_field_leaves_the_list(results):
    cm, confidence, _ = results
    first = suggest(cm, confidence, 1)[0]
    cm.add_reviewed((first.box[0] + 20, first.box[1] + 20, 10, 10))  # a small review inside it is enough
    after = [f.box for f in ranked_fields(cm, confidence)]
    assert first.box not in after
    assert after[0] == field_box(*sorted(LOW, key=LOW.get)[1])


def test_the_command_prints_level0_boxes_and_writes_qupath_geojson(results, tmp_path, capsys):
    cm, confidence, values = results
    out = tmp_path / "next.geojson"
    assert main(["suggest", str(cm.root), "-n", "2", "--geojson", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (r, c), _ = min(LOW.items(), key=lambda item: item[1])
    y, x, h, w = (2 * v for v in field_box(r, c))
    assert lines[1].split() == ["1", str(x), str(y), str(w), str(h), f"{mean_of(values, r, c):.3f}"]
    collection = json.loads(out.read_text())
    assert len(collection["features"]) == 2
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Suggested review"
    assert feature["geometry"]["coordinates"][0] == [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    assert feature["properties"]["measurements"]["mean confidence"] == pytest.approx(mean_of(values, r, c), abs=1e-4)


def test_the_command_finds_the_results_of_a_slide_beside_it(results, tmp_path, capsys):
    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"")  # only its name and place matter here
    assert main(["suggest", str(slide), "-n", "1"]) == 0
    assert "1 field(s) to review" in capsys.readouterr().out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("count", ["0", "-3"])
def test_a_count_below_one_is_one_line_and_exits_2(results, capsys, count):
    cm, _, _ = results
    with pytest.raises(SystemExit) as stop:
        main(["suggest", str(cm.root), "-n", count])
    assert stop.value.code == 2 and "-n/--count" in one_error_line(capsys)


def test_results_without_a_class_map_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty.samlung").mkdir()
    assert main(["suggest", str(tmp_path / "empty.samlung")]) == 2
    assert "no class map" in one_error_line(capsys)
    assert main(["suggest", str(tmp_path / "missing.samlung")]) == 2
    assert "no such file" in one_error_line(capsys)


def test_results_without_confidence_say_to_segment_again_and_exit_2(results, capsys):
    cm, _, _ = results
    shutil.rmtree(cm.root / ConfidenceMap.STORE)
    assert main(["suggest", str(cm.root)]) == 2
    line = one_error_line(capsys)
    assert "no confidence map" in line and "samlung segment" in line
    assert ClassMap.exists(cm.root)
