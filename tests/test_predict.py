"""``samlung predict`` (run_predict) and the whole-image prediction it stands on."""

from __future__ import annotations

import argparse
import json

import imagecodecs
import numpy as np
import pytest
import torch

from napari_samlung.data import DataError
from napari_samlung.commands.predict import PredictError, add_arguments as add_predict_arguments, run as run_predict
from napari_samlung.evaluation import Postprocess
from napari_samlung.inference.images import predict_logits
from napari_samlung.labels import IGNORE
from napari_samlung.metrics import image_metrics
from napari_samlung.model import SamLung, SamLungConfig
from napari_samlung.model.checkpoint import CheckpointError, save_checkpoint
from training_sets import blob_pair, write_export_set, write_png, write_research_layout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(SamLung(SamLungConfig.tiny(img_size=64)), path, include_encoder=True)
    return path


def predict_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    return parser.parse_args(list(argv))


def read_tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    rows = {}
    for line in lines[1:]:
        name, *values = line.split("\t")
        rows[name] = dict(zip(header[1:], map(float, values)))
    return header, rows


def test_predict_on_a_research_split_writes_metrics_and_masks(tmp_path, checkpoint, capsys):
    # Sizes that are not multiples of 16, so padding and cropping back are exercised.
    pairs = [("a", *blob_pair(40, 0)), ("b", *blob_pair(40, 1)), ("c", *blob_pair(56, 2))]
    root = write_research_layout(tmp_path / "DATA", {"test": pairs})
    out = tmp_path / "out"
    args = predict_args("--checkpoint", str(checkpoint), "--data-path", str(root / "test"), "-o", str(out),
                        "--device", "cpu", "--batch-size", "2", "--save-masks", "--kernel-size", "3",
                        "--iterations", "1")
    assert run_predict(args) == 0
    header, rows = read_tsv(out / "metrics.tsv")
    assert header == ["name", "dice", "iou", "pixel_accuracy", "hd95"]
    assert sorted(rows) == ["# mean", "a", "b", "c"]
    for name, image, label in pairs:
        mask = imagecodecs.imread(out / "masks" / f"{name}.png")
        assert mask.shape == label.shape and set(np.unique(mask)) <= {0, 255}
        # The table holds the metrics of exactly the masks written.
        expected = image_metrics(mask // 255, label)
        assert rows[name]["dice"] == pytest.approx(expected.dice, abs=1e-5)
        assert rows[name]["pixel_accuracy"] == pytest.approx(expected.pixel_accuracy, abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3
    assert rows["# mean"]["dice"] == pytest.approx(np.mean([rows[n]["dice"] for n in "abc"]), abs=1e-5)
    printed = capsys.readouterr().out
    assert "mean over 3 images: Dice" in printed


def test_predict_on_plain_images_writes_only_masks(tmp_path, checkpoint):
    folder = tmp_path / "images"
    for i in range(3):
        write_png(folder / f"img{i}.png", blob_pair(48, i)[0])
    out = tmp_path / "out"
    assert run_predict(predict_args("--checkpoint", str(checkpoint), "--data-path", str(folder),
                                    "-o", str(out), "--device", "cpu", "--no-postprocess")) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    assert not (out / "metrics.tsv").exists()


def test_predict_on_an_export_set_ignores_unreviewed_pixels(tmp_path, checkpoint):
    image, label = blob_pair(32, 0)
    unreviewed = label.copy()
    unreviewed[:, :16] = IGNORE
    root = write_export_set(tmp_path / "SET", [("a", image, unreviewed, None)])
    out = tmp_path / "out"
    run_predict(predict_args("--checkpoint", str(checkpoint), "--data-path", str(root), "-o", str(out),
                             "--device", "cpu", "--save-masks", "--no-postprocess"))
    mask = imagecodecs.imread(out / "masks" / "a.png") // 255
    _, rows = read_tsv(out / "metrics.tsv")
    assert rows["a"]["pixel_accuracy"] == pytest.approx((mask[:, 16:] == label[:, 16:]).mean(), abs=1e-5)


class PerPixel:
    """A stand-in predictor whose logits at a pixel depend on that pixel only, so windowed
    prediction must equal whole-image prediction exactly."""

    num_classes = 1

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        red, green = images[..., 0].float(), images[..., 1].float()
        return torch.stack([red - green, green - red + 1], dim=1)


@pytest.mark.parametrize(("height", "width"), [(100, 70), (50, 130), (37, 41)])
def test_windowed_prediction_equals_whole_image_prediction(height, width):
    images = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8)
    whole = PerPixel()(images)
    windowed = predict_logits(PerPixel(), images, max_size=48, overlap=16)
    assert windowed.shape == (2, 2, height, width)
    torch.testing.assert_close(windowed, whole)


def test_model_prediction_in_windows_covers_the_image(checkpoint):
    from napari_samlung.inference.predictor import TilePredictor
    from napari_samlung.model.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)
    predictor = TilePredictor(model, model.config, "cpu")
    images = torch.from_numpy(blob_pair(80, 0)[0])[None]
    logits = predict_logits(predictor, images, max_size=48)
    assert logits.shape == (1, 2, 80, 80) and torch.isfinite(logits).all()


def test_postprocess_removes_specks_and_can_be_disabled():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:30, 5:30] = 1
    labels[35, 35] = 1  # a speck
    cleaned = Postprocess(kernel_size=3, iterations=1)(labels)
    assert cleaned[35, 35] == 0 and cleaned[15, 15] == 1
    assert Postprocess(enabled=False)(labels) is labels


def test_bad_inputs_raise_value_errors_naming_the_argument(tmp_path, checkpoint):
    root = write_research_layout(tmp_path / "DATA", {"test": [("a", *blob_pair(32, 0))]})
    base = ["--data-path", str(root / "test"), "-o", str(tmp_path / "out"), "--device", "cpu"]
    with pytest.raises(CheckpointError, match=r"missing.pt: no such file"):
        run_predict(predict_args("--checkpoint", str(tmp_path / "missing.pt"), *base))
    with pytest.raises(PredictError, match="--batch-size must be >= 1"):
        run_predict(predict_args("--checkpoint", str(checkpoint), *base, "--batch-size", "0"))
    with pytest.raises(PredictError, match="--kernel-size must be >= 1"):
        run_predict(predict_args("--checkpoint", str(checkpoint), *base, "--kernel-size", "0"))
    with pytest.raises(DataError, match="nowhere: --data-path is not a folder"):
        run_predict(predict_args("--checkpoint", str(checkpoint), "--data-path", str(tmp_path / "nowhere"),
                                 "-o", str(tmp_path / "out")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PredictError, match="-o/--output exists and is not a folder"):
        run_predict(predict_args("--checkpoint", str(checkpoint), "--data-path", str(root / "test"),
                                 "-o", str(tmp_path / "file")))
