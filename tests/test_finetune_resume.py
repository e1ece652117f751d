"""--resume continues the same curve: an interrupted run ends with the uninterrupted run's weights."""

from __future__ import annotations

import torch

from napari_samlung.model.checkpoint import read_checkpoint
from training.finetune import main
from training_sets import read_events, synthetic_research_layout

RUN = ["--preset", "tiny", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--crop-size", "48",
       "--max-steps-per-epoch", "2", "--print-freq", "1", "--seed", "7"]


def test_resumed_run_reproduces_the_uninterrupted_run_bit_exactly(tmp_path):
    """2 epochs in one go vs 1 epoch, then --resume for the 2nd: every trainable tensor (BatchNorm
    statistics included), the optimizer's momentum and the learning rate are bit-identical on the CPU
    (torch RNG, augmentation seeds and sampler order are restored or fixed by the seed)."""
    data = synthetic_research_layout(tmp_path / "DATA", size=56, train=5, val=2)
    common = ["--data-path", str(data), *RUN]
    assert main([*common, "--epochs", "2", "--output-dir", str(tmp_path / "straight")]) == 0
    assert main([*common, "--epochs", "1", "--output-dir", str(tmp_path / "split")]) == 0
    assert main([*common, "--epochs", "2", "--output-dir", str(tmp_path / "split"),
                 "--resume", str(tmp_path / "split" / "last.pt")]) == 0

    straight = read_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = read_checkpoint(tmp_path / "split" / "last.pt")
    assert straight["trainable"].keys() == resumed["trainable"].keys()
    for key, value in straight["trainable"].items():
        assert torch.equal(value, resumed["trainable"][key]), key
    momentum = [s["momentum_buffer"] for s in straight["extra"]["optimizer"]["state"].values()]
    momentum_resumed = [s["momentum_buffer"] for s in resumed["extra"]["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, momentum_resumed, strict=True))
    for key in ("epoch", "global_step", "val_dice", "best_dice"):
        assert straight["extra"][key] == resumed["extra"][key], key
    assert straight["extra"]["lr_scheduler"]["_last_lr"] == resumed["extra"]["lr_scheduler"]["_last_lr"]

    # The resumed run appends to the same metrics file: epochs 1 and 2, one start each.
    events = read_events(tmp_path / "split")
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert [e["resumed"] for e in events if e["event"] == "start"] == [False, True]
