"""SamLung: config presets, normalization, output shapes, what trains, runtime switches."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from napari_samlung.model import SamLung, SamLungConfig, normalize
from official_sam import randomize_positions_, relative_error

# ----------------------------------------------------------------------------- config


def test_vit_b_preset_has_the_sam_vit_b_dimensions_and_he_statistics() -> None:
    config = SamLungConfig.vit_b(num_classes=1)
    assert (config.embed_dim, config.depth, config.num_heads, config.window_size) == (768, 12, 12, 14)
    assert config.global_attn_indexes == (2, 5, 8, 11)
    assert (config.patch_size, config.out_chans, config.img_size, config.adapter_dim) == (16, 256, 1024, 64)
    assert config.head_bins == (1, 2, 3, 6) and (config.cbam_reduction, config.cbam_kernel) == (16, 5)
    assert config.pixel_mean == (0.709, 0.381, 0.224) and config.pixel_std == (0.127, 0.079, 0.043)
    assert config.mpp == 0.5 and config.preset == "vit_b"


def test_presets_take_overrides_and_tiny_is_small() -> None:
    tiny = SamLungConfig.tiny(num_classes=3, mpp=None)
    assert tiny.preset == "tiny" and tiny.num_classes == 3 and tiny.mpp is None and tiny.img_size == 256
    assert SamLungConfig.vit_b(img_size=512).grid_size == 32


@pytest.mark.parametrize("preset", [SamLungConfig.vit_b, SamLungConfig.tiny])
def test_config_dict_survives_json_and_rebuilds_the_same_config(preset) -> None:
    config = preset(num_classes=2, mpp=0.25)
    data = json.loads(json.dumps(config.to_dict()))
    assert SamLungConfig.from_dict(data) == config


def test_config_keys_missing_from_a_dict_come_from_its_preset() -> None:
    assert SamLungConfig.from_dict({"preset": "tiny", "num_classes": 2}) == SamLungConfig.tiny(num_classes=2)


@pytest.mark.parametrize(("key", "value"), [("num_classes", "2"), ("num_classes", True), ("mpp", "0.5"),
                                            ("head_bins", 6), ("global_attn_indexes", [2, 5.5]),
                                            ("pixel_std", ["a", 1, 1])])
def test_config_from_dict_names_an_ill_typed_key(key: str, value: object) -> None:
    data = SamLungConfig.tiny().to_dict() | {key: value}
    with pytest.raises(ValueError, match=key):
        SamLungConfig.from_dict(data)


def test_config_from_dict_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match="colour_space"):
        SamLungConfig.from_dict(SamLungConfig.tiny().to_dict() | {"colour_space": "rgb"})


@pytest.mark.parametrize(("field", "value"), [("img_size", 250), ("num_heads", 5),
                                              ("global_attn_indexes", (4,)), ("pixel_std", (0.1, 0.0, 0.1)),
                                              ("adapter_dropout", 1.0)])
def test_config_rejects_inconsistent_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamLungConfig.tiny(**{field: value})


# ----------------------------------------------------------------------------- normalization


def test_normalize_applies_he_statistics_in_either_channel_order() -> None:
    config = SamLungConfig.tiny()
    images = torch.randint(0, 256, (2, 16, 24, 3), dtype=torch.uint8)
    from_last = normalize(images, config)
    from_first = normalize(images.permute(0, 3, 1, 2).contiguous(), config)
    mean = torch.tensor(config.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.pixel_std).view(1, 3, 1, 1)
    want = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert from_last.shape == from_first.shape == (2, 3, 16, 24) and from_last.dtype == torch.float32
    torch.testing.assert_close(from_last, want)
    torch.testing.assert_close(from_first, want)


@pytest.mark.parametrize(("images", "error"), [(torch.zeros(1, 8, 8, 3), TypeError),
                                               (torch.zeros(8, 8, 3, dtype=torch.uint8), ValueError),
                                               (torch.zeros(1, 3, 8, 3, dtype=torch.uint8), ValueError),
                                               (torch.zeros(1, 4, 8, 8, dtype=torch.uint8), ValueError)])
def test_normalize_rejects_what_is_not_a_uint8_rgb_batch(images: torch.Tensor, error: type) -> None:
    with pytest.raises(error, match="normalize"):
        normalize(images, SamLungConfig.tiny())


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("size", [(256, 256), (320, 192)])
def test_forward_gives_num_classes_plus_one_logits_at_input_size(size: tuple[int, int]) -> None:
    model = SamLung(SamLungConfig.tiny(num_classes=2)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 3, *size)


def test_only_adapters_and_head_are_trainable() -> None:
    model = SamLung(SamLungConfig.tiny())
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, p in model.named_parameters():
        is_adapter_or_head = name.startswith("head.") or ".adapter_attn." in name or ".adapter_mlp." in name
        assert p.requires_grad == is_adapter_or_head == (id(p) in trainable), name
    assert "head.bottleneck.1.running_mean" in model.trainable_state_dict()


def test_vit_b_trains_about_2_8_million_of_92_million_parameters() -> None:
    with torch.device("meta"):
        model = SamLung(SamLungConfig.vit_b())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 2.7e6 < trainable < 2.9e6 and 92e6 < total < 93e6


def test_one_optimizer_step_changes_the_adapted_encoder_output_but_no_sam_weight() -> None:
    torch.manual_seed(0)
    model = SamLung(SamLungConfig.tiny())
    frozen = {k: v.clone() for k, v in model.image_encoder.sam_state_dict().items()}
    x = torch.randn(2, 3, 256, 256)
    model.eval()
    with torch.no_grad():
        before = model.image_encoder(x)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    model.train()
    F.cross_entropy(model(x), torch.randint(0, 2, (2, 256, 256))).backward()
    assert all(p.grad is None for p in model.image_encoder.parameters() if not p.requires_grad)
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model.image_encoder(x)
    assert not torch.allclose(after, before, atol=1e-6)
    for key, value in model.image_encoder.sam_state_dict().items():
        assert torch.equal(value, frozen[key]), key


def test_head_trains_at_batch_size_one() -> None:
    torch.manual_seed(0)
    model = SamLung(SamLungConfig.tiny()).train()
    x = torch.randn(1, 3, 256, 256)
    target = torch.zeros(1, 256, 256, dtype=torch.long)
    target[:, 64:192, 32:160] = 1
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def _gradients(model: SamLung, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    model.train().zero_grad()
    F.cross_entropy(model(x), target).backward()
    return torch.cat([p.grad.flatten() for p in model.trainable_parameters()])


def _deterministic_tiny() -> SamLung:
    """Tiny model without dropout, with random positions and adapters that are not identities."""
    torch.manual_seed(0)
    model = randomize_positions_(SamLung(SamLungConfig.tiny(adapter_dropout=0.0, head_dropout=0.0)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".up." in name:
                p.normal_(std=0.05)
    return model


def test_block_checkpointing_gives_the_same_gradients() -> None:
    model = _deterministic_tiny()
    x, target = torch.randn(2, 3, 256, 256), torch.randint(0, 2, (2, 256, 256))
    want = _gradients(copy.deepcopy(model), x, target)
    got = _gradients(model.set_block_checkpointing(True), x, target)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_blocks_match_eager_in_inference_and_in_checkpointed_training() -> None:
    eager = _deterministic_tiny()
    compiled = copy.deepcopy(eager).compile_blocks()
    x, target = torch.randn(2, 3, 256, 256), torch.randint(0, 2, (2, 256, 256))
    with torch.no_grad():
        want, got = eager.eval()(x), compiled.eval()(x)
    assert relative_error(got, want) <= 1e-5
    want = _gradients(eager, x, target)
    got = _gradients(compiled.set_block_checkpointing(True), x, target)
    assert relative_error(got, want) <= 1e-4


@pytest.mark.slow
def test_compiled_flex_attention_matches_eager_reference_in_inference() -> None:
    eager = _deterministic_tiny()
    compiled = copy.deepcopy(eager).set_attention("flex").compile_blocks()
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        want, got = eager.set_attention("reference").eval()(x), compiled.eval()(x)
    assert relative_error(got, want) <= 1e-5
