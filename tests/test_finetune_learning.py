"""Learning on real data: the OCDC tiles (../shared/fixtures/ocdc), tiny model, CPU.

Seven tiles train, three validate, all resized to 160 x 160. The validation tiles were picked to
span tumor fractions of 0.20, 0.43 and 0.85, so that no constant guess scores well.

Figures measured here (torch 2.13 CPU, seed 0; 150 epochs of 2 steps at batch 4, lr 0.02):
  all-tumor guess      mean Dice 0.620
  untrained model      mean Dice 0.547
  after fine-tuning    mean Dice 0.748 (the default --tune full: the tiny preset's encoder is random;
                       adapters and head alone, before --tune existed: 0.733)
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from napari_samlung.commands.predict import add_arguments as add_predict_arguments, run as run_predict
from napari_samlung.metrics import dice_score
from napari_samlung.model import SamLung, SamLungConfig
from napari_samlung.model.checkpoint import save_checkpoint
from training.finetune import main
from training_sets import ocdc_pairs, write_research_layout

SIZE = 160
VAL = ("1009009_r28c12", "1009009_r35c8", "1009009_r27c10")
MARGIN = 0.06  # measured gain over the best baseline: 0.11


def mean_dice(checkpoint, split_dir, out) -> float:
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    run_predict(parser.parse_args(["--checkpoint", str(checkpoint), "--data-path", str(split_dir),
                                   "-o", str(out), "--device", "cpu", "--no-postprocess"]))
    last = (out / "metrics.tsv").read_text().splitlines()[-1].split("\t")
    assert last[0] == "# mean"
    return float(last[1])


@pytest.mark.slow
def test_fine_tuning_beats_the_untrained_model_and_the_all_tumor_guess(ocdc_dir, tmp_path):
    pairs = ocdc_pairs(ocdc_dir, SIZE)
    assert set(VAL) <= pairs.keys()
    data = write_research_layout(tmp_path / "DATA", {
        "train": [(name, *pair) for name, pair in pairs.items() if name not in VAL],
        "val": [(name, *pairs[name]) for name in VAL],
    })
    all_tumor = np.mean([dice_score(np.ones_like(pairs[name][1]), pairs[name][1]) for name in VAL])

    torch.manual_seed(0)  # the model the run starts from (the trainer seeds the same way)
    untrained_file = tmp_path / "untrained.pt"
    save_checkpoint(SamLung(SamLungConfig.tiny(img_size=SIZE)), untrained_file, include_encoder=True)
    untrained = mean_dice(untrained_file, data / "val", tmp_path / "eval-untrained")

    out = tmp_path / "run"
    code = main(["--data-path", str(data), "--output-dir", str(out), "--preset", "tiny", "--device", "cpu",
                 "--workers", "0", "--batch-size", "4", "--epochs", "150", "--lr", "0.02",
                 "--print-freq", "1000"])
    assert code == 0
    trained = mean_dice(out / "last.pt", data / "val", tmp_path / "eval-trained")
    print(f"all-tumor {all_tumor:.3f}  untrained {untrained:.3f}  fine-tuned {trained:.3f}")
    assert trained > max(all_tumor, untrained) + MARGIN
