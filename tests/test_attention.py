"""Folded ("fast") and FlexAttention ("flex") attention compute what the plain reference math computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_samlung.model import SamLung, SamLungConfig
from napari_samlung.model.attention import (
    RelPosAttention,
    relative_position_table,
    window_partition,
    window_unpartition,
)
from official_sam import randomize_positions_, relative_error


FLEX_EAGER = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")


@FLEX_EAGER
@pytest.mark.parametrize("mode", ["fast", "flex"])
@pytest.mark.parametrize("grid", [(7, 7), (6, 9), (5, 3)])
def test_attention_equals_reference_on_a_token_grid(mode: str, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    attn = randomize_positions_(RelPosAttention(dim=48, num_heads=3, input_size=7))
    x = torch.randn(2, *grid, 48)
    with torch.no_grad():  # flex runs without gradients only
        attn.mode = "reference"
        want = attn(x)
        attn.mode = mode
        got = attn(x)
    assert relative_error(got, want) <= 1e-5


@FLEX_EAGER
@pytest.mark.parametrize("mode", ["fast", "flex"])
@pytest.mark.parametrize("size", [(256, 256), (336, 272), (512, 400)])
def test_encoder_equals_reference_windowed_and_global_at_any_tile_size(mode: str, size: tuple[int, int]) -> None:
    # tiny: window 4, img_size 256; 336x272 -> 21x17 tokens, so windows are padded and the
    # global blocks' relative-position tables are interpolated (trained for 16x16).
    torch.manual_seed(0)
    model = randomize_positions_(SamLung(SamLungConfig.tiny())).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want = model.set_attention("reference").image_encoder(x)
        got = model.set_attention(mode).image_encoder(x)
    assert relative_error(got, want) <= 1e-5


def test_flex_mode_puts_flex_in_the_global_blocks_only() -> None:
    model = SamLung(SamLungConfig.tiny()).set_attention("flex")
    modes = {block.window_size > 0: block.attn.mode for block in model.image_encoder.blocks}
    assert modes == {True: "fast", False: "flex"}


@pytest.mark.parametrize("mode", ["fast", "flex"])  # flex is for inference: it trains through the folded path
def test_attention_gradients_equal_the_reference_ones(mode: str) -> None:
    torch.manual_seed(0)
    attn = randomize_positions_(RelPosAttention(dim=32, num_heads=2, input_size=4))
    x = torch.randn(1, 5, 6, 32)
    grads = {}
    for m in ("reference", mode):
        attn.zero_grad()
        attn.mode = m
        attn(x).square().sum().backward()
        grads[m] = [p.grad.clone() for p in attn.parameters()]
    for got, want in zip(grads[mode], grads["reference"]):
        assert relative_error(got, want) <= 1e-5


def test_fast_attention_under_bfloat16_autocast_stays_close_to_float32() -> None:
    torch.manual_seed(0)
    model = randomize_positions_(SamLung(SamLungConfig.tiny())).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        want = model.set_attention("reference").image_encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.set_attention("fast").image_encoder(x)
    assert got.dtype == torch.bfloat16
    assert relative_error(got.float(), want) < 0.05


def test_relative_position_table_indexes_offsets_and_interpolates_other_sizes() -> None:
    table = torch.randn(7, 5)  # trained for size 4: offsets -3..3
    looked_up = relative_position_table(table, 4)
    for i in range(4):
        for j in range(4):
            assert torch.equal(looked_up[i, j], table[i - j + 3])
    resized = relative_position_table(table, 6)
    want = F.interpolate(table.t()[None], size=11, mode="linear")[0].t()
    assert resized.shape == (6, 6, 5)
    assert torch.equal(resized[5, 0], want[10]) and torch.equal(resized[0, 5], want[0])


def test_window_partition_pads_and_unpartition_restores_the_grid() -> None:
    x = torch.randn(2, 9, 6, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 3 * 2, 4, 4, 3)
    assert torch.equal(windows[1], F.pad(x, (0, 0, 0, 2, 0, 3))[0, 0:4, 4:8])
    assert torch.equal(windows[5, 1:, :], torch.zeros(3, 4, 3))  # bottom-right window, rows past 9
    assert torch.equal(window_unpartition(windows, 4, 9, 6), x)


def test_set_attention_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="attention mode"):
        SamLung(SamLungConfig.tiny()).set_attention("flash")

