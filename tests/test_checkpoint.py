"""Official SAM weights load as they are; SAM-Lung checkpoints round-trip bit-exactly; bad files are
refused."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from napari_samlung.model import (
    CheckpointError,
    SamLung,
    SamLungConfig,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from official_sam import official_sam, randomize_positions_


def _zero_filled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same keys and shapes, each tensor a zero-stride view of one float (so big layouts save small)."""
    return {k: torch.zeros(()).expand(v.shape) for k, v in state.items()}


@pytest.fixture
def trained_tiny() -> SamLung:
    """A tiny model whose every weight and buffer differs from a fresh one."""
    torch.manual_seed(0)
    model = SamLung(SamLungConfig.tiny(num_classes=2, mpp=0.25))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.train()(torch.randn(2, 3, 256, 256))  # BatchNorm running statistics move
    return model.eval()


def _outputs(model: SamLung) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(5)))


def _assert_same_state(got: SamLung, want: SamLung) -> None:
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for key, value in want_state.items():
        assert torch.equal(got_state[key], value), key


# ----------------------------------------------------------------------------- round trips


def test_checkpoint_plus_separate_sam_file_round_trips_bit_exactly(trained_tiny, tmp_path: Path) -> None:
    sam_file = tmp_path / "sam.pth"
    sam_state = trained_tiny.image_encoder.sam_state_dict()
    torch.save({"image_encoder." + k: v for k, v in sam_state.items()}, sam_file)
    path = save_checkpoint(trained_tiny, tmp_path / "ckpt.pt")
    assert "encoder" not in read_checkpoint(path)
    loaded = load_checkpoint(path, sam_weights=sam_file)
    assert loaded.config == dataclasses.replace(trained_tiny.config, encoder_weights="sam")  # from the SAM file
    _assert_same_state(loaded, trained_tiny)
    assert torch.equal(_outputs(loaded), _outputs(trained_tiny))


def test_a_whole_network_trained_model_saves_its_encoder_unasked_and_loads_it_over_the_sam_file(
        trained_tiny, tmp_path: Path) -> None:
    sam_file = tmp_path / "sam.pth"
    torch.save({"image_encoder." + k: torch.zeros_like(v)
                for k, v in trained_tiny.image_encoder.sam_state_dict().items()}, sam_file)
    trained_tiny.set_tune("full")
    assert trained_tiny.config.encoder_weights == "trained"
    path = save_checkpoint(trained_tiny, tmp_path / "full.pt")  # no include_encoder: no other file holds it
    content = read_checkpoint(path)
    assert "encoder" in content and content["config"]["tune"] == "full"
    loaded = load_checkpoint(path, sam_weights=sam_file)
    assert loaded.config == trained_tiny.config
    _assert_same_state(loaded, trained_tiny)


def test_a_checkpoint_whose_trained_encoder_is_missing_is_refused(trained_tiny, tmp_path: Path) -> None:
    content = read_checkpoint(save_checkpoint(trained_tiny.set_tune("full"), tmp_path / "full.pt"))
    del content["encoder"]
    torch.save(content, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match=r"damaged\.pt: its encoder was trained \(tune full\) but the file"):
        load_checkpoint(tmp_path / "damaged.pt", sam_weights=tmp_path / "any.pth")


def test_self_contained_checkpoint_round_trips_bit_exactly(trained_tiny, tmp_path: Path) -> None:
    path = save_checkpoint(trained_tiny, tmp_path / "full.pt", include_encoder=True)
    loaded = load_checkpoint(path)
    _assert_same_state(loaded, trained_tiny)
    assert torch.equal(_outputs(loaded), _outputs(trained_tiny))


def test_checkpoint_keeps_trainer_state_in_extra(trained_tiny, tmp_path: Path) -> None:
    optimizer = torch.optim.SGD(trained_tiny.trainable_parameters(), lr=0.01, momentum=0.9)
    trained_tiny.train()(torch.randn(1, 3, 256, 256)).sum().backward()
    optimizer.step()
    extra = {"optimizer": optimizer.state_dict(), "epoch": 3, "rng": torch.get_rng_state(),
             "metrics": {"dice": [0.5, 0.75]}, "note": None}
    content = read_checkpoint(save_checkpoint(trained_tiny, tmp_path / "ckpt.pt", extra=extra))
    assert content["extra"]["epoch"] == 3 and content["extra"]["metrics"] == {"dice": [0.5, 0.75]}
    assert torch.equal(content["extra"]["rng"], extra["rng"])
    restored = torch.optim.SGD(trained_tiny.trainable_parameters(), lr=0.5)
    restored.load_state_dict(content["extra"]["optimizer"])
    assert restored.param_groups[0]["lr"] == 0.01


def test_extra_that_safe_loading_could_not_read_back_is_refused_naming_where(trained_tiny, tmp_path) -> None:
    import numpy as np

    with pytest.raises(TypeError, match=r"extra\['rng'\]\['numpy'\] is a numpy\.ndarray"):
        save_checkpoint(trained_tiny, tmp_path / "ckpt.pt", extra={"rng": {"numpy": np.zeros(3)}})
    with pytest.raises(TypeError, match=r"extra\['metrics'\]\[1\] is a numpy\.float64"):
        save_checkpoint(trained_tiny, tmp_path / "ckpt.pt", extra={"metrics": [0.5, np.float64(0.7)]})
    assert list(tmp_path.iterdir()) == []


def test_saving_is_atomic_and_leaves_no_temporary_file(trained_tiny, tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(trained_tiny, tmp_path / "ckpt.pt")
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(trained_tiny, path, extra={"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


# ----------------------------------------------------------------------------- official SAM files


def test_full_official_sam_file_loads_ignoring_prompt_encoder_and_mask_decoder(tmp_path: Path) -> None:
    config = SamLungConfig.tiny()
    torch.manual_seed(0)
    sam = official_sam(config)
    randomize_positions_(sam.image_encoder)
    state = sam.state_dict()
    assert any(k.startswith("prompt_encoder.") for k in state)
    assert any(k.startswith("mask_decoder.") for k in state)
    torch.save(state, tmp_path / "sam_tiny.pth")
    model = SamLung(config)
    report = model.load_sam_weights(tmp_path / "sam_tiny.pth")
    assert report.missing == [] and report.unexpected == [] and report.ignored > 0
    for key, value in model.image_encoder.sam_state_dict().items():
        assert torch.equal(value, state["image_encoder." + key]), key


def test_encoder_only_state_dict_loads_as_it_is() -> None:
    config = SamLungConfig.tiny()
    source = SamLung(config).image_encoder.sam_state_dict()
    model = SamLung(config)
    report = model.load_sam_weights({k: v + 1 for k, v in source.items()})
    assert report.loaded == len(source)
    assert torch.equal(model.image_encoder.pos_embed, source["pos_embed"] + 1)


def test_official_vit_b_file_layout_matches_the_vit_b_preset_key_for_key(tmp_path: Path) -> None:
    # segment_anything's own ViT-B SAM at 1024 px, built on the meta device: its keys and shapes only
    with torch.device("meta"):
        state = official_sam(SamLungConfig.vit_b(), prompt_dim=256).state_dict()
    torch.save(_zero_filled(state), tmp_path / "sam_vit_b_layout.pth")
    report = SamLung(SamLungConfig.vit_b()).load_sam_weights(tmp_path / "sam_vit_b_layout.pth")
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == sum(k.startswith("image_encoder.") for k in state)


def test_vit_l_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    vit_l = SamLungConfig.vit_b(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
    with torch.device("meta"):
        state = official_sam(vit_l, prompt_dim=256).state_dict()
    torch.save(_zero_filled(state), tmp_path / "sam_vit_l.pth")
    with pytest.raises(CheckpointError, match=r"sam_vit_l\.pth: key 'image_encoder\.\S+' has shape .*ViT-L"):
        SamLung(SamLungConfig.vit_b()).load_sam_weights(tmp_path / "sam_vit_l.pth")


def test_sam_file_for_another_tile_size_says_which_img_size_to_use() -> None:
    state = SamLung(SamLungConfig.tiny(img_size=512)).image_encoder.sam_state_dict()
    with pytest.raises(CheckpointError, match=r"'pos_embed' has shape \(1, 32, 32, 64\).*img_size=512"):
        SamLung(SamLungConfig.tiny()).load_sam_weights(state)


def test_missing_and_unexpected_encoder_keys_are_an_error_or_reported() -> None:
    state = SamLung(SamLungConfig.tiny()).image_encoder.sam_state_dict()
    del state["neck.1.weight"]
    state["blocks.9.attn.qkv.weight"] = torch.zeros(3)
    expected = (r"1 missing key\(s\) \(neck\.1\.weight\); "
                r"1 unexpected key\(s\) \(blocks\.9\.attn\.qkv\.weight\)")
    with pytest.raises(CheckpointError, match=expected):
        SamLung(SamLungConfig.tiny()).load_sam_weights(state)
    report = SamLung(SamLungConfig.tiny()).load_sam_weights(state, strict=False)
    assert report.missing == ["neck.1.weight"] and report.unexpected == ["blocks.9.attn.qkv.weight"]


def test_a_sam_lung_checkpoint_is_not_taken_for_sam_weights(trained_tiny, tmp_path: Path) -> None:
    path = save_checkpoint(trained_tiny, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="no SAM image-encoder weights"):
        SamLung(SamLungConfig.tiny()).load_sam_weights(path)


# ----------------------------------------------------------------------------- refusals


def test_checkpoint_without_encoder_needs_sam_weights(trained_tiny, tmp_path: Path) -> None:
    path = save_checkpoint(trained_tiny, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"ckpt\.pt.*--sam-weights"):
        load_checkpoint(path)


def test_official_sam_file_given_as_checkpoint_points_to_sam_weights(tmp_path: Path) -> None:
    torch.save(SamLung(SamLungConfig.tiny()).image_encoder.sam_state_dict(), tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match=r"sam\.pth: not a napari-samlung checkpoint.*--sam-weights"):
        load_checkpoint(tmp_path / "sam.pth")


class _CreatesMarkerWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_file_carrying_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-samlung-checkpoint", "payload": _CreatesMarkerWhenUnpickled(marker)}, path)
    load_as_sam_weights = SamLung(SamLungConfig.tiny()).load_sam_weights
    for load in (read_checkpoint, load_checkpoint, load_as_sam_weights):
        with pytest.raises(CheckpointError, match=r"evil\.pt: refused: .*pickled code"):
            load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: unsafe loading runs it
    assert marker.exists()


def test_a_plain_pickle_carrying_code_is_refused_as_code_in_one_line(tmp_path: Path, capfd) -> None:
    """A protocol-4 pickle (not torch.save's format) was called unreadable, after a torch warning."""
    import pickle

    marker = tmp_path / "payload-ran"
    evil, plain = tmp_path / "evil.pt", tmp_path / "plain.pt"
    evil.write_bytes(pickle.dumps({"payload": _CreatesMarkerWhenUnpickled(marker)}, protocol=4))
    plain.write_bytes(pickle.dumps({"format": "napari-samlung-checkpoint"}, protocol=4))
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: it carries pickled code or objects \(\S*open\)"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a PyTorch checkpoint \(unreadable pickle data: a plain"):
        read_checkpoint(plain)
    assert not marker.exists() and "pickle protocol" not in capfd.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", os.urandom(4096), b'{"format": 1}'])
def test_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a"):
        read_checkpoint(path)


def test_truncated_checkpoint_is_refused(trained_tiny, tmp_path: Path) -> None:
    path = save_checkpoint(trained_tiny, tmp_path / "ckpt.pt", include_encoder=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere\.pt: no such file"):
        load_checkpoint(tmp_path / "nowhere.pt", sam_weights=tmp_path / "sam.pth")


def _resave(path: Path, **changes) -> Path:
    content = torch.load(path, weights_only=True) | changes
    torch.save(content, path)
    return path


def test_checkpoint_from_a_newer_format_or_with_a_bad_config_is_refused(trained_tiny, tmp_path: Path) -> None:
    path = save_checkpoint(trained_tiny, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="newer napari-samlung"):
        read_checkpoint(_resave(path, format_version=99))
    config = trained_tiny.config.to_dict() | {"depth": "four"}
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: .*'depth'"):
        read_checkpoint(_resave(path, format_version=1, config=config))


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(trained_tiny, tmp_path: Path) -> None:
    path = save_checkpoint(trained_tiny, tmp_path / "ckpt.pt", include_encoder=True)
    content = torch.load(path, weights_only=True)
    content["trainable"]["head.classifier.weight"] = torch.zeros(5, 8, 1, 1)
    torch.save(content, path)
    expected = r"ckpt\.pt: key 'head\.classifier\.weight' has shape \(5, 8, 1, 1\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_the_spec_read_before_loading_carries_the_checkpoints_class_count(tmp_path: Path) -> None:
    from napari_samlung.inference.models import model_spec

    path = tmp_path / "three.pt"
    save_checkpoint(SamLung(SamLungConfig.tiny(num_classes=3)), path)
    assert model_spec(path).num_classes == 3  # new results (an import) get the checkpoint's classes
    assert model_spec(None, "tiny", 2).num_classes == 2
