"""samlung-finetune's options, errors, loss and schedule, and a short single-process run."""

from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_samlung.labels import IGNORE
from napari_samlung.model import SamLung, SamLungConfig
from napari_samlung.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from training.finetune import get_args_parser, main
from training.losses import SegmentationLoss, soft_dice_loss
from training.schedule import WARMUP_START, poly_factor
from training_sets import (
    blob_pair,
    read_events,
    synthetic_research_layout,
    write_export_set,
    write_research_layout,
)

TINY = ["--preset", "tiny", "--device", "cpu", "--workers", "0", "--print-freq", "1"]


def parse(*argv: str):
    return get_args_parser().parse_args(["--data-path", "DATA", *argv])


def test_boolean_options_are_flags():
    def flags(args):
        return (args.amp, args.sync_bn, args.test_only, args.distributed, args.save_best)

    assert flags(parse()) == (False, False, False, False, True)
    assert flags(parse("--amp", "--sync_bn", "--test-only", "--distributed", "--no-save-best")) == (
        True, True, True, True, False)
    assert parse("--sync-bn").sync_bn


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--amp", "True", "--sync_bn", "True", "--save-best", "True"], (True, True, True)),
        (["--amp", "False", "--sync_bn", "False", "--save-best", "False"], (False, False, False)),
        (["--amp=yes", "--sync-bn", "0", "--save-best", "off"], (True, False, False)),
        (["--amp", "--sync_bn", "--save-best"], (True, True, True)),
    ],
)
def test_boolean_options_take_the_research_codes_true_false_values(argv, expected):
    args = parse(*argv, "--test-only", "TRUE")
    assert (args.amp, args.sync_bn, args.save_best) == expected and args.test_only


def test_a_boolean_value_that_is_neither_true_nor_false_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--amp", "maybe")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "argument --amp: expected true or false, got 'maybe'" in err


def test_the_research_codes_short_options_and_start_epoch():
    args = parse("-b", "8", "-j", "2", "--start_epoch", "3", "--wd", "0.001")
    assert (args.batch_size, args.workers, args.start_epoch, args.weight_decay) == (8, 2, 3, 0.001)
    assert parse("--start-epoch", "5").start_epoch == 5 and parse().start_epoch == 0


def test_every_option_of_the_research_code_is_there():
    """The options of the research code's train_multi_GPU_Mona.py, as its launch lines spell them."""
    research = ["--data-path", "d", "--device", "cpu", "--num-classes", "1", "-b", "2", "--batch-size", "2",
                "--start_epoch", "0", "--epochs", "2", "--sync_bn", "False", "-j", "0", "--workers", "0",
                "--lr", "0.0001", "--momentum", "0.9", "--wd", "1e-4", "--weight-decay", "1e-4",
                "--save-best", "True", "--print-freq", "20", "--output-dir", "out", "--resume", "",
                "--test-only", "--distributed", "--world-size", "1", "--dist-url", "env://", "--amp", "False"]
    args = get_args_parser().parse_args(research)
    assert args.resume == "" and args.test_only and not args.amp and args.lr == 0.0001


def test_research_code_defaults_and_options():
    args = parse()
    assert (args.lr, args.momentum, args.weight_decay, args.dist_url) == (0.01, 0.9, 1e-4, "env://")
    args = parse("--num-classes", "2", "--epochs", "3", "--world-size", "2", "--amp-dtype", "float16")
    assert (args.num_classes, args.epochs, args.world_size, args.amp_dtype) == (2, 3, 2, "float16")


def test_console_script_points_at_main():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "samlung-finetune"]
    assert script.load() is main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--crop-size", "20"], "--crop-size must be a positive multiple of 16"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--resume", "a.pt", "--init-checkpoint", "b.pt"],
         "--resume and --init-checkpoint exclude each other"),
        (["--distributed"], "--distributed needs the RANK and WORLD_SIZE"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    data = synthetic_research_layout(tmp_path / "DATA", size=32, train=2, val=1)
    code = main(["--data-path", str(data), "--output-dir", str(tmp_path / "out"), *TINY, *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_data_exits_2_naming_the_file(tmp_path, capsys):
    data = synthetic_research_layout(tmp_path / "DATA", size=32, train=2, val=1)
    (data / "train" / "label" / "t1.png").unlink()
    code = main(["--data-path", str(data), "--output-dir", str(tmp_path / "out"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "t1.png: no label with the same name" in err
    events = read_events(tmp_path / "out")
    assert events[-1]["event"] == "error" and "t1.png" in events[-1]["message"]


def test_differently_sized_images_need_a_crop_or_batch_1(tmp_path, capsys):
    root = synthetic_research_layout(tmp_path / "DATA", size=32, train=2, val=1)
    export = write_export_set(tmp_path / "SET", [("big", *blob_pair(48, 5), None)])
    code = main(["--data-path", str(root), "--data-path", str(export), "--output-dir", str(tmp_path / "o"),
                 *TINY, "--batch-size", "2"])
    assert code == 2 and "pass --crop-size N or --batch-size 1" in capsys.readouterr().err


def test_poly_schedule_warms_up_then_decays_to_zero():
    assert poly_factor(0, total_steps=100, warmup_steps=10) == pytest.approx(WARMUP_START)
    assert poly_factor(5, 100, 10) == pytest.approx(WARMUP_START * 0.5 + 0.5)
    assert poly_factor(10, 100, 10) == pytest.approx(1.0)
    assert poly_factor(55, 100, 10) == pytest.approx(0.5**0.9)
    assert poly_factor(100, 100, 10) == 0.0


def test_loss_is_half_dice_half_weighted_cross_entropy_and_skips_ignored_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    target[0, :3] = IGNORE
    loss = SegmentationLoss(num_classes=1)(logits, target)
    ce = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 1.5]), ignore_index=IGNORE)
    expected = 0.5 * ce.item() + 0.5 * soft_dice_loss(logits, target).item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # What the logits say under ignored pixels does not matter.
    changed = logits.detach().clone()
    changed[0, :, :3] += 100
    assert SegmentationLoss(1)(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert logits.grad[0, :, :3].abs().max() == 0 and logits.grad.abs().sum() > 0


def test_loss_of_a_fully_ignored_batch_is_zero_not_nan():
    loss = SegmentationLoss(1)(torch.randn(1, 2, 4, 4), torch.full((1, 4, 4), IGNORE))
    assert loss.item() == 0.0


def test_soft_dice_loss_is_zero_for_a_perfect_confident_prediction():
    target = torch.randint(0, 2, (1, 8, 8))
    logits = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_fine_tuning_on_corrections_from_a_checkpoint(tmp_path):
    """The GUI's case: an exported set, --init-checkpoint, batch size 1, one step per epoch."""
    torch.manual_seed(0)
    init = tmp_path / "init.pt"
    save_checkpoint(SamLung(SamLungConfig.tiny(img_size=64)), init, include_encoder=True)
    labels = [blob_pair(32, i)[1] for i in range(3)]
    labels[0][:8] = IGNORE
    tiles = [(f"c{i}", blob_pair(32, i)[0], labels[i], None) for i in range(3)]
    export = write_export_set(tmp_path / "SET", tiles, mpp=0.25)
    out = tmp_path / "run"
    code = main(["--data-path", str(export), "--init-checkpoint", str(init), "--output-dir", str(out), *TINY,
                 "--batch-size", "1", "--epochs", "2", "--max-steps-per-epoch", "1"])
    assert code == 0
    events = read_events(out)
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "step", "epoch", "step", "epoch", "done"]
    step = events[1]
    assert {"epoch", "step", "steps", "loss", "lr", "images_per_s"} <= step.keys() and step["steps"] == 1
    assert {"epoch", "loss", "val_dice", "images_per_s"} <= events[2].keys()
    assert events[-1] == {**events[-1], "best": str(out / "best.pt"), "last": str(out / "last.pt")}
    assert "held out 1 of 3" in (out / "train.log").read_text()

    tuned = load_checkpoint(out / "last.pt")  # self-contained: the encoder travels along
    assert tuned.config.mpp == 0.25
    before = load_checkpoint(init).trainable_state_dict()
    after = tuned.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    best = read_checkpoint(out / "best.pt")
    assert "optimizer" not in best["extra"] and best["extra"]["epoch"] in (1, 2)
    assert np.isfinite(best["extra"]["val_dice"])


def test_resume_refuses_a_checkpoint_without_training_state(tmp_path, capsys):
    model_file = tmp_path / "model.pt"
    save_checkpoint(SamLung(SamLungConfig.tiny(img_size=32)), model_file, include_encoder=True)
    data = synthetic_research_layout(tmp_path / "DATA", size=32, train=2, val=1)
    code = main(["--data-path", str(data), "--resume", str(model_file), "--output-dir", str(tmp_path / "o"),
                 *TINY])
    assert code == 2 and "holds no training state to resume" in capsys.readouterr().err


def test_test_only_evaluates_the_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    data = synthetic_research_layout(tmp_path / "DATA", size=32, train=2, val=1)
    write_research_layout(data, {"test": [("s0", *blob_pair(32, 50)), ("s1", *blob_pair(32, 51))]})
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(SamLung(SamLungConfig.tiny(img_size=32)), out / "best.pt", include_encoder=True)
    code = main(["--data-path", str(data), "--output-dir", str(out), *TINY, "--test-only", "--save-masks",
                 "--kernel-size", "3", "--iterations", "1"])
    assert code == 0
    rows = (out / "test" / "metrics.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["name", "s0", "s1", "# mean"]
    assert sorted(p.name for p in (out / "test" / "masks").iterdir()) == ["s0.png", "s1.png"]
    (event,) = read_events(out)
    assert event["event"] == "test" and event["split"] == "test" and event["images"] == 2
