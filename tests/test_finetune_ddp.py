"""A real 2-process DDP run (gloo on the CPU) through torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from napari_samlung.model.checkpoint import load_checkpoint
from training.finetune import weights_digest
from training_sets import read_events, synthetic_research_layout

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_run_ends_with_identical_weights_on_both_ranks(tmp_path):
    data = synthetic_research_layout(tmp_path / "DATA", size=48, train=6, val=3)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.finetune", "--data-path", str(data), "--output-dir", str(out),
               "--preset", "tiny", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--epochs", "2",
               "--print-freq", "1", "--sync_bn", "--rank-digests"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    digests = [(out / f"digest-rank{rank}.txt").read_text().strip() for rank in (0, 1)]
    assert digests[0] == digests[1]
    # Rank 0 saved what both ranks hold.
    assert weights_digest(load_checkpoint(out / "last.pt")) == digests[0]
    events = read_events(out)
    start = events[0]
    assert start["world_size"] == 2 and start["steps"] == 2  # 6 images / (2 ranks x batch 2), rounded up
    assert [e["val_images"] for e in events if e["event"] == "epoch"] == [3, 3]  # every val image, once
    assert events[-1]["event"] == "done"


def test_a_loss_that_diverges_on_two_processes_stops_both_in_one_line_each(tmp_path):
    """Both ranks see the non-finite loss at the same step (it rides on the log's reduction), so
    neither waits for the other in a collective: the run ends at once, saving nothing."""
    data = synthetic_research_layout(tmp_path / "DATA", size=32, train=4, val=2)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.finetune", "--data-path", str(data), "--output-dir", str(out),
               "--preset", "tiny", "--device", "cpu", "--workers", "0", "--batch-size", "1", "--epochs", "2",
               "--max-steps-per-epoch", "2", "--print-freq", "10", "--lr", "1e30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    # One line per rank (the two may interleave on the shared stderr); torchrun adds its own report.
    assert result.stderr.count("samlung-finetune: error: epoch 1, step 2/2: the loss is nan") == 2, result.stderr
    assert f'File "{ROOT / "training"}' not in result.stderr  # no traceback out of the trainer
    assert not list(out.glob("*.pt"))
    assert read_events(out)[-1]["event"] == "error"
