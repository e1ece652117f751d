"""samlung-finetune --tune {mona,full,head}: what trains, the default and the log line saying so, what
the checkpoints carry and how they load, refusals, and learning on real tissue."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from napari_samlung.inference.models import load_model
from napari_samlung.model import SamLung, SamLungConfig
from napari_samlung.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from napari_samlung.model.config import TUNE_MODES
from napari_samlung.training_runs import contract
from training.finetune import get_args_parser, main, parameter_groups
from training_sets import synthetic_research_layout

TINY = ["--device", "cpu", "--workers", "0", "--print-freq", "100", "--batch-size", "2", "--max-steps-per-epoch", "1"]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MARGIN = 0.05  # over the all-tumour guess; measured: 0.115 (benchmarks/README.md)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic_research_layout(tmp_path_factory.mktemp("data") / "DATA", size=32, train=4, val=2)


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[Path, Path]:
    """A SAM file in the official layout for the tiny preset's encoder, and a self-contained random tiny model."""
    folder = tmp_path_factory.mktemp("start")
    torch.manual_seed(0)
    sam = SamLung(SamLungConfig.tiny()).image_encoder.sam_state_dict()
    sam_file = folder / "sam.pth"
    torch.save({"image_encoder." + k: v for k, v in sam.items()}, sam_file)
    return sam_file, save_checkpoint(SamLung(SamLungConfig.tiny(img_size=32)), folder / "random.pt",
                                     include_encoder=True)


def finetune(data: Path, out: Path, *argv: str, epochs: int = 1) -> str:
    """Run the trainer in this process; returns its log."""
    code = main(["--data-path", str(data), "--output-dir", str(out), "--epochs", str(epochs), *TINY, *argv])
    assert code == 0
    return (out / "train.log").read_text()


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_default_on_a_random_encoder_trains_the_whole_network_says_so_and_the_checkpoint_carries_it(
        data, start, tmp_path):
    _, random_start = start
    log = finetune(data, tmp_path / "run", "--init-checkpoint", str(random_start))
    assert sum("--tune full by default: the encoder has no pretrained weights" in line
               for line in log.splitlines()) == 1
    content = read_checkpoint(tmp_path / "run" / "last.pt")
    assert content["config"]["tune"] == "full" and content["config"]["encoder_weights"] == "trained"
    initial, tuned = load_checkpoint(random_start), load_checkpoint(tmp_path / "run" / "last.pt")
    encoder_changed = changed(initial.image_encoder.sam_state_dict(), tuned.image_encoder.sam_state_dict())
    assert {"pos_embed", "blocks.0.attn.qkv.weight", "neck.0.weight"} <= encoder_changed


def test_default_on_the_official_sam_encoder_is_mona_and_its_checkpoint_stays_small(data, start, tmp_path):
    sam_file, _ = start
    log = finetune(data, tmp_path / "mona", "--preset", "tiny", "--sam-weights", str(sam_file))
    assert "--tune mona by default: Mona adapters and head on the official SAM encoder" in log
    content = read_checkpoint(tmp_path / "mona" / "last.pt")
    assert content["config"]["tune"] == "mona" and "encoder" not in content
    tuned = load_checkpoint(tmp_path / "mona" / "last.pt", sam_weights=sam_file)
    sam = torch.load(sam_file, weights_only=True)
    assert not changed({k.removeprefix("image_encoder."): v for k, v in sam.items()},
                       tuned.image_encoder.sam_state_dict())  # the encoder is the official file's
    adapter = "image_encoder.blocks.0.adapter_attn.up.weight"
    assert adapter in changed(SamLung(tuned.config).trainable_state_dict(), tuned.trainable_state_dict())

    finetune(data, tmp_path / "full", "--preset", "tiny", "--sam-weights", str(sam_file), "--tune", "full")
    full = tmp_path / "full" / "best.pt"
    assert "encoder" in read_checkpoint(full)  # although --sam-weights was given: the encoder was trained
    assert (tmp_path / "mona" / "best.pt").stat().st_size < full.stat().st_size / 4


def test_a_whole_network_checkpoint_loads_its_own_encoder_over_the_sam_weights(data, start, tmp_path):
    sam_file, _ = start
    finetune(data, tmp_path / "run", "--preset", "tiny", "--sam-weights", str(sam_file), "--tune", "full")
    checkpoint = tmp_path / "run" / "best.pt"
    tuned = load_checkpoint(checkpoint)  # self-contained
    model, info = load_model(checkpoint, sam_weights=sam_file)  # what segment, predict and the widget load
    assert info["checkpoint"] == str(checkpoint.resolve())
    assert not changed(tuned.state_dict(), model.state_dict())
    sam = {k.removeprefix("image_encoder."): v for k, v in torch.load(sam_file, weights_only=True).items()}
    assert "blocks.1.mlp.lin1.weight" in changed(sam, model.image_encoder.sam_state_dict())


def test_head_alone_leaves_the_encoder_and_the_adapters_as_they_were(data, start, tmp_path):
    _, random_start = start
    log = finetune(data, tmp_path / "run", "--init-checkpoint", str(random_start), "--tune", "head")
    assert "--tune head on an encoder without pretrained weights: it stays random" in log
    initial, tuned = load_checkpoint(random_start), load_checkpoint(tmp_path / "run" / "last.pt")
    assert tuned.config.tune == "head" and tuned.config.encoder_weights == "random"
    moved = changed(initial.state_dict(), tuned.state_dict())
    assert moved and all(key.startswith("head.") for key in moved)


def test_a_resume_keeps_the_runs_tune_and_refuses_another_in_one_line(data, start, tmp_path, capsys):
    _, random_start = start
    out = tmp_path / "run"
    finetune(data, out, "--init-checkpoint", str(random_start), "--tune", "head")
    capsys.readouterr()
    code = main(["--data-path", str(data), "--output-dir", str(out), "--epochs", "2", *TINY,
                 "--resume", str(out / "last.pt"), "--tune", "full"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("samlung-finetune: error: ")
    assert "trained with --tune head and resumes only with it" in err

    log = finetune(data, out, "--resume", str(out / "last.pt"), epochs=2)
    assert "--tune head: the mode of the run being resumed" in log
    assert read_checkpoint(out / "last.pt")["config"]["tune"] == "head"


def test_an_unknown_tune_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args(["--data-path", "D", "--tune", "lora"])
    assert exit_info.value.code == 2
    assert "--tune: invalid choice: 'lora'" in capsys.readouterr().err


def test_the_whole_network_trains_its_encoder_at_a_share_of_the_learning_rate():
    model = SamLung(SamLungConfig.tiny())
    (parts,) = parameter_groups(model, 0.02, 0.1)  # mona: the adapters and the head, nothing else
    assert parts["lr"] == 0.02 and len(parts["params"]) == len(model.trainable_parameters())
    parts, encoder = parameter_groups(model.set_tune("full"), 0.02, 0.1)
    assert parts["lr"] == 0.02 and encoder["lr"] == pytest.approx(0.002)
    assert len(parts["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    assert any(p is model.image_encoder.pos_embed for p in encoder["params"])


def test_a_launcher_request_with_an_unknown_tune_is_refused(start, data, tmp_path):
    _, random_start = start
    request = contract.FinetuneConfig([data], random_start, tmp_path / "out", tune="lora")
    with pytest.raises(contract.FinetuneError, match="tune must be one of mona, full, head, got 'lora'"):
        request.validate()


def test_the_tune_words_are_the_same_for_the_model_the_trainer_and_the_launcher():
    choices = next(a.choices for a in get_args_parser()._actions if a.dest == "tune")
    assert tuple(choices) == TUNE_MODES == contract.TUNE_MODES


@pytest.mark.slow
def test_the_default_learns_real_tissue_beyond_the_all_tumour_guess(ocdc_dir):
    """Two-process DDP on the OCDC tiles (benchmarks/learning.py with its settings): the default
    (--tune full on the tiny preset's random encoder) beats calling everything tumour on the test split."""
    sys.path.insert(0, str(BENCHMARKS))
    from learning import measure_learning

    figures = measure_learning(ocdc_dir, tunes=(None,))
    default, guess = figures["runs"]["default"], figures["all_tumour_test_dice"]
    print(f"all-tumour {guess:.3f}  default ({default['tune']}) {default['test_dice']:.3f}")
    assert default["tune"] == "full"
    assert default["test_dice"] > guess + MARGIN
