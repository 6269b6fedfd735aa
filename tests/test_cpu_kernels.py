"""The cached decoder's CPU products (oneDNN where torch has it) equal torch's own ops to float32 rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pseudo_ris.captioning import cpu_kernels as K

torch.set_num_threads(1)


@pytest.fixture(params=[True, False])
def switch(request):
    K.set_enabled(request.param)
    yield request.param
    K.set_enabled(True)


def _data(m=7, k=48, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k ** 0.5,
            torch.randn(n, generator=g))


@torch.no_grad()
def test_linear_matmul_equal_torch(switch):
    x, w, b = _data()
    assert torch.allclose(K.linear(x, w, b), torch.nn.functional.linear(x, w, b), atol=1e-5, rtol=1e-5)
    assert torch.allclose(K.linear(x, w), x @ w.t(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(K.linear(x, w, b, gelu=True), torch.nn.functional.gelu(x @ w.t() + b), atol=1e-5)
    weight = w.t().contiguous()  # [in, out], as CoCa's vocabulary projection
    assert torch.allclose(K.matmul(x, weight), x @ weight, atol=1e-5, rtol=1e-5)
    assert torch.allclose(K.matmul(x, weight[:, ::3]), x @ weight[:, ::3], atol=1e-5, rtol=1e-5)  # strided
    wide = torch.randn(7, 96)
    assert torch.allclose(K.linear(wide[:, ::2], w, b), torch.nn.functional.linear(wide[:, ::2], w, b),
                          atol=1e-5, rtol=1e-5)  # non-contiguous input
    assert K.linear(x[:0], w, b).shape == (0, 40)


@torch.no_grad()
@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU()])
def test_mlp_equals_module(switch, act):
    torch.manual_seed(0)
    from collections import OrderedDict

    mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(32, 64)), ("gelu", act), ("c_proj", nn.Linear(64, 32))]))
    x = torch.randn(5, 32)
    assert torch.allclose(K.mlp(mlp, x), mlp(x), atol=1e-5, rtol=1e-5)


def test_switch_and_grad_fall_back_to_torch():
    x, w, b = _data()
    K.set_enabled(False)
    try:
        assert not K.enabled()
        with torch.no_grad():
            assert torch.equal(K.linear(x, w, b), torch.nn.functional.linear(x, w, b))  # the same op, bit for bit
    finally:
        K.set_enabled(True)
    w.requires_grad_(True)
    K.linear(x, w, b).sum().backward()  # autograd: plain torch path
    assert w.grad is not None


@torch.no_grad()
def test_cpu_autocast_is_followed():
    x, w, b = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert K.linear(x, w, b).dtype == torch.bfloat16  # F.linear under autocast, not the float32 kernel
