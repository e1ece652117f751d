"""Mona adapters: merged depthwise kernel equals the three-convolution form; fresh adapters are identities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_samlung.model.adapters import MonaAdapter, MultiScaleDepthwise


def three_convolutions(module: MultiScaleDepthwise, x: torch.Tensor) -> torch.Tensor:
    """Mona's definition: the mean of the 3x3, 5x5 and 7x7 depthwise convolutions, plus x."""
    return sum(conv(x) for conv in module.convs) / 3 + x


def test_merged_depthwise_kernel_equals_mean_of_three_convolutions_plus_identity() -> None:
    torch.manual_seed(0)
    module = MultiScaleDepthwise(8)
    x = torch.randn(2, 8, 11, 9, requires_grad=True)
    torch.testing.assert_close(module(x), three_convolutions(module, x), rtol=1e-5, atol=1e-6)


def test_merged_depthwise_kernel_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    module = MultiScaleDepthwise(4)
    x = torch.randn(1, 4, 10, 10)
    target = torch.randn(1, 4, 10, 10)
    grads = []
    for forward in (module, lambda t: three_convolutions(module, t)):
        module.zero_grad()
        F.mse_loss(forward(x), target).backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for merged, separate in zip(*grads):
        torch.testing.assert_close(merged, separate, rtol=1e-5, atol=1e-7)


def test_fresh_adapter_is_the_identity_and_a_trained_one_is_not() -> None:
    torch.manual_seed(0)
    adapter = MonaAdapter(dim=32, inner_dim=8).eval()
    x = torch.randn(2, 5, 7, 32)
    assert torch.equal(adapter(x), x)
    assert adapter.gamma.eq(1e-6).all() and adapter.gammax.eq(1).all()
    with torch.no_grad():
        adapter.up.weight.normal_()
    assert not torch.allclose(adapter(x), x)
