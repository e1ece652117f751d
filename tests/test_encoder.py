"""The SAM-Lung image encoder computes the official SAM encoder's function, at any tile size."""

from __future__ import annotations

import pytest
import torch

from napari_samlung.model import SamLung, SamLungConfig
from official_sam import official_encoder, randomize_positions_, relative_error


@pytest.fixture(scope="module")
def vit_b_case() -> tuple[torch.Tensor, torch.Tensor, SamLung]:
    """(input, official ViT-B output, SamLung on the same weights) at 256 px, random position tables."""
    config = SamLungConfig.vit_b(img_size=256)
    torch.manual_seed(0)
    official = randomize_positions_(official_encoder(config)).eval()
    model = SamLung(config).eval()
    report = model.load_sam_weights(official.state_dict())
    assert report.missing == [] and report.unexpected == []
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, official(x), model


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_encoder_equals_official_sam_vit_b_with_fresh_adapters(vit_b_case, mode: str) -> None:
    x, want, model = vit_b_case
    with torch.no_grad():
        got = model.set_attention(mode).image_encoder(x)
    assert got.shape == want.shape == (1, 256, 16, 16)
    assert relative_error(got, want) <= 1e-5


def test_encoder_differs_from_official_once_an_adapter_is_trained(vit_b_case) -> None:
    x, want, model = vit_b_case
    up = model.image_encoder.blocks[3].adapter_mlp.up
    try:
        with torch.no_grad():
            up.bias.fill_(0.1)
            assert relative_error(model.image_encoder(x), want) > 1e-3
    finally:
        with torch.no_grad():
            up.bias.zero_()


@pytest.mark.parametrize("size", [(256, 256), (512, 384), (336, 272)])
def test_encoder_output_is_out_chans_at_one_sixteenth_of_any_tile_size(size: tuple[int, int]) -> None:
    model = SamLung(SamLungConfig.tiny()).eval()
    with torch.no_grad():
        features = model.image_encoder(torch.randn(2, 3, *size))
    assert features.shape == (2, 32, size[0] // 16, size[1] // 16)
    assert torch.isfinite(features).all()


def test_position_embedding_is_resized_only_for_other_grids() -> None:
    encoder = SamLung(SamLungConfig.tiny()).image_encoder
    assert encoder.position_embedding(16, 16) is encoder.pos_embed
    with torch.no_grad():
        encoder.pos_embed.fill_(0.25)
    resized = encoder.position_embedding(24, 10)
    assert resized.shape == (1, 24, 10, 64)
    torch.testing.assert_close(resized, torch.full_like(resized, 0.25))


@pytest.mark.parametrize("shape", [(1, 3, 256, 250), (1, 3, 100, 256), (1, 4, 256, 256), (3, 256, 256)])
def test_encoder_rejects_inputs_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    model = SamLung(SamLungConfig.tiny())
    with pytest.raises(ValueError, match="image encoder"):
        model(torch.zeros(shape))
