"""Matrix products of the cached decoder, on oneDNN's CPU kernels where torch ships them.

Why: the cached sampler spends most of its time in [pairs, 512] x [512, 2048]-sized products. torch's CPU
``F.linear`` goes through MKL, which on non-Intel CPUs (e.g. AMD EPYC with AVX-512) takes a generic AVX2 path;
oneDNN's kernels (the ones torch's compiler uses for CPU linears) run the same float32 products ~2.2x faster
there. They are still float32 with float32 accumulation (only the summation order differs, so results agree with
``F.linear`` to float32 rounding) as long as torch's oneDNN float32 math mode is left at its default.

The kernels are used only for 2-D float32 CPU inputs without autograd or CPU autocast, and only after a one-time probe has run
the op and matched ``F.linear``; everywhere else (GPU, other dtypes, torch builds without oneDNN) these helpers
are plain ``F.linear`` / ``@``. ``set_enabled(False)`` switches them off (benchmarks, tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["linear", "matmul", "mlp", "enabled", "set_enabled"]

_state: dict[str, bool | None] = {"wanted": True, "works": None}


def set_enabled(flag: bool) -> None:
    """Use oneDNN's kernels when available (default) or always the plain torch ops."""
    _state["wanted"] = bool(flag)


def _probe() -> bool:
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 16, generator=g)
        w = torch.randn(8, 16, generator=g)
        b = torch.randn(8, generator=g)
        with torch.no_grad():
            ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
            ok = ok and torch.allclose(op(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b)), atol=1e-5,
                                       rtol=1e-5)
        return bool(ok)
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def enabled() -> bool:
    """Whether ``linear`` uses oneDNN for eligible inputs in this process."""
    if not _state["wanted"]:
        return False
    if _state["works"] is None:
        _state["works"] = _probe()
    return bool(_state["works"])


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 2 and x.shape[0] > 0 and not torch.is_grad_enabled() and not _cpu_autocast()
            and enabled())


def _cpu_autocast() -> bool:
    """CPU autocast on: leave the products to ``F.linear``, which follows it."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then exact-erf GELU if ``gelu``); ``weight`` [out, in] may be a view."""
    if _eligible(x, weight):
        x = x.contiguous()
        if not (weight.is_contiguous() or weight.t().is_contiguous()):  # oneDNN takes plain or transposed layouts
            weight = weight.contiguous()
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` for ``weight`` [in, out] (e.g. CoCa's vocabulary projection), as a linear over its view."""
    return linear(x, weight.t())


def mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's block MLP (c_fc -> GELU -> c_proj) with the GELU fused into the first product; any other
    MLP (e.g. QuickGELU, tanh-approximate GELU) runs its products here and its activation as written."""
    fc, act, proj = module.c_fc, module.gelu, module.c_proj
    if type(act) is nn.GELU and act.approximate == "none":
        h = linear(x, fc.weight, fc.bias, gelu=True)
    else:
        h = act(linear(x, fc.weight, fc.bias))
    return linear(h, proj.weight, proj.bias)
