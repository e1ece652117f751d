"""samlung-finetune under faults: a diverging loss, bad numbers and devices, unusable output folders,
Ctrl-C, and a rendezvous address nobody answers. Each ends in one line, never a traceback or a hang,
and no checkpoint with non-finite weights is ever written."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_samlung.model.checkpoint import load_checkpoint, read_checkpoint
from training import finetune
from training.finetune import get_args_parser, main
from training.schedule import poly_factor
from training_sets import read_events, synthetic_research_layout

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--device", "cpu", "--workers", "0", "--batch-size", "2"]


def one_line(text: str) -> bool:
    return text.count("\n") == 1 and "Traceback" not in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return synthetic_research_layout(tmp_path / "DATA", size=32, train=4, val=1)


def checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.pt"))


def test_a_diverging_loss_stops_naming_epoch_and_step_and_saves_nothing(tmp_path, data, capsys):
    out = tmp_path / "run"
    code = main(["--data-path", str(data), "--output-dir", str(out), *TINY, "--lr", "1e30", "--epochs", "2",
                 "--max-steps-per-epoch", "2", "--print-freq", "10"])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err), err
    assert "epoch 1, step 2/2: the loss is nan" in err and "--lr" in err
    assert checkpoints(out) == []
    assert read_events(out)[-1]["event"] == "error"


def poison_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make training epoch ``epoch`` (1-based) end with a NaN in one head weight."""
    real = finetune.train_one_epoch

    def train_one_epoch(model, config, criterion, optimizer, scheduler, scaler, loader, device, amp_dtype,
                        progress, logger, metrics):
        stats = real(model, config, criterion, optimizer, scheduler, scaler, loader, device, amp_dtype,
                     progress, logger, metrics)
        if progress.epoch + 1 == epoch:
            with torch.no_grad():
                next(model.head.parameters()).view(-1)[0] = float("nan")
        return stats

    monkeypatch.setattr(finetune, "train_one_epoch", train_one_epoch)


@pytest.mark.parametrize("bad_epoch", [1, 2])
def test_weights_that_are_not_finite_are_never_saved(tmp_path, data, capsys, monkeypatch, bad_epoch):
    poison_epoch(monkeypatch, bad_epoch)
    out = tmp_path / "run"
    code = main(["--data-path", str(data), "--output-dir", str(out), *TINY, "--epochs", "3",
                 "--max-steps-per-epoch", "1"])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err), err
    assert f"epoch {bad_epoch}: the weights are no longer finite" in err
    if bad_epoch == 1:
        assert checkpoints(out) == []
        return
    assert checkpoints(out) == ["best.pt", "last.pt"]
    for name in ("best.pt", "last.pt"):  # epoch 1's, whole and finite
        assert read_checkpoint(out / name)["extra"]["epoch"] == 1
        state = load_checkpoint(out / name).trainable_state_dict()
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--momentum", "nan"], "--momentum"),
        (["--weight-decay", "inf"], "--weight-decay"),
        (["--wd", "-1"], "--weight-decay"),
        (["--val-fraction", "nan"], "--val-fraction"),
        (["--mpp", "inf"], "--mpp"),
        (["--dist-timeout", "nan"], "--dist-timeout"),
        (["--device", "banana"], "--device"),
        (["--device", "meta"], "--device"),
    ],
)
def test_bad_numbers_and_devices_are_one_line_and_exit_2(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-path", "DATA", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and one_line(err), err
    assert err.startswith("samlung-finetune: error: argument ") and option in err


def test_device_auto_and_a_missing_cuda_device(tmp_path, capsys):
    assert get_args_parser().parse_args(["--data-path", "D", "--device", "auto"]).device in ("cpu", "cuda")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["--data-path", "D", "--output-dir", str(tmp_path / "o"), "--device", "cuda:1"])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and "CUDA is not available" in err


def test_an_output_dir_that_is_a_file_or_cannot_be_created_is_one_line(tmp_path, data, capsys):
    file = tmp_path / "file.txt"
    file.write_text("x")
    code = main(["--data-path", str(data), "--output-dir", str(file), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and f"{file}: --output-dir is a file, not a folder" in err
    code = main(["--data-path", str(data), "--output-dir", str(file / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and "cannot create the --output-dir folder" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_output_dir_that_is_not_writable_is_one_line(tmp_path, data, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        code = main(["--data-path", str(data), "--output-dir", str(out), *TINY])
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and "--output-dir is not writable" in err


def test_start_epoch_begins_a_new_run_further_on_the_learning_rate_curve(tmp_path, data):
    out = tmp_path / "run"
    assert main(["--data-path", str(data), "--output-dir", str(out), *TINY, "--epochs", "3", "--start_epoch", "2",
                 "--max-steps-per-epoch", "2", "--print-freq", "1"]) == 0
    events = read_events(out)
    assert events[0]["start_epoch"] == 3
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [3]
    first_step = next(e for e in events if e["event"] == "step")
    assert first_step["global_step"] == 5
    assert first_step["lr"] == pytest.approx(0.01 * poly_factor(4, total_steps=6, warmup_steps=2))
    assert read_checkpoint(out / "last.pt")["extra"]["epoch"] == 3


def test_start_epoch_must_lie_before_the_last_epoch(tmp_path, capsys):
    code = main(["--data-path", "D", "--output-dir", str(tmp_path / "o"), *TINY, "--epochs", "2",
                 "--start_epoch", "2"])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and "--start_epoch must be >= 0 and below --epochs 2" in err


def trainer(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "training.finetune", *argv], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_ctrl_c_prints_one_line_exits_130_and_keeps_the_checkpoints(tmp_path, data):
    out = tmp_path / "run"
    process = trainer("--data-path", str(data), "--output-dir", str(out), *TINY, "--epochs", "1000",
                      "--print-freq", "1")
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() or not any(
                e["event"] == "epoch" and e["epoch"] >= 2 for e in read_events(out)):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert one_line(err) and f"samlung-finetune: interrupted; continue with --resume {out / 'last.pt'}" in err
    for name in ("best.pt", "last.pt"):
        assert read_checkpoint(out / name)["extra"]["epoch"] >= 2
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint left behind
    assert read_events(out)[-1] == {**read_events(out)[-1], "event": "error", "message": "interrupted"}


def test_an_unreachable_dist_url_fails_in_one_line_within_the_timeout(tmp_path):
    """Process 1 of 2 looks for the rendezvous at an address where nobody listens."""
    url = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    process = trainer("--data-path", "DATA", "--output-dir", str(tmp_path / "o"), "--device", "cpu",
                      "--dist-url", url, "--dist-timeout", "2",
                      env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 2 and one_line(err), err
    assert f"--dist-url {url}: process 1 of 2 did not meet the others within 2 s" in err
    assert "--dist-timeout" in err
    assert time.monotonic() - started < 30


def test_the_first_process_gives_up_when_the_others_never_come(tmp_path, monkeypatch, capsys):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    url = f"tcp://127.0.0.1:{free_port()}"
    code = main(["--data-path", "DATA", "--output-dir", str(tmp_path / "o"), "--device", "cpu",
                 "--dist-url", url, "--dist-timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and "process 0 of 2 did not meet the others within 1 s" in err
