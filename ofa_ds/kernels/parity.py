"""Parity checks of fused kernels against the plain-PyTorch references, in any dtype.

Used by ``tests/gpu`` and ``benchmarks/gpu_check.py`` (CPU tests compare in float32
directly, see ``tests/unit/test_kernels*.py``).

The error bound, and why: the truth is the reference computed in float64 from the same
inputs. In a low precision the reference itself is off from that truth (bf16 rounds the
scores before the softmax, for example), so a fixed tolerance would be either too loose
for float32 or too tight for bf16. A fused path passes when its error is at most
``FACTOR`` times the reference's own error in the same dtype, plus a small floor for
outputs that the reference happens to get almost exactly:

    rel_err(fused) <= 2 * rel_err(reference) + floor[dtype]

with ``rel_err(x) = max|x - truth| / max|truth|``. In words: the fused kernel must be no
less accurate than the unfused path it replaces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ofa_ds.kernels.attention import reference_attention
from ofa_ds.kernels.elementwise import bias_dropout_add_eager, bias_gelu_eager

FACTOR = 2.0
FLOOR = {torch.float32: 2e-5, torch.bfloat16: 4e-3, torch.float16: 1e-3}


@dataclass
class ParityResult:
    name: str
    dtype: str
    errors: dict[str, float] = field(default_factory=dict)
    """Relative error of the fused path, per output/gradient."""
    ref_errors: dict[str, float] = field(default_factory=dict)
    """Relative error of the reference path in the same dtype."""
    passed: bool = True
    note: str = ""

    def line(self) -> str:
        worst = max(self.errors, key=lambda k: self.errors[k] - self.bound(k)) if self.errors else "-"
        detail = (f"worst {worst}: {self.errors[worst]:.2e} (reference {self.ref_errors.get(worst, 0):.2e}, "
                  f"bound {self.bound(worst):.2e})") if self.errors else ""
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<44} {self.dtype:<9} {detail} {self.note}"

    def bound(self, key: str) -> float:
        return FACTOR * self.ref_errors.get(key, 0.0) + FLOOR[getattr(torch, self.dtype)]


def rel_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    scale = truth.abs().max().clamp_min(1e-30)
    return ((x.double() - truth).abs().max() / scale).item()


def _judge(result: ParityResult, got: dict, ref: dict, truth: dict) -> ParityResult:
    for key in truth:
        result.errors[key] = rel_err(got[key], truth[key])
        result.ref_errors[key] = rel_err(ref[key], truth[key])
    result.passed = all(result.errors[k] <= result.bound(k) for k in result.errors)
    return result


def _run_with_grads(fn: Callable, inputs: dict, names: list[str], grad_out: torch.Tensor) -> dict:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k in names}
    args = {**inputs, **leaves}
    out = fn(args)
    grads = torch.autograd.grad(out, [leaves[k] for k in names], grad_out.to(out.dtype))
    return {"out": out.detach(), **{f"d{k}": g for k, g in zip(names, grads)}}


def check_attention(impl: Callable, name: str, *, dtype: torch.dtype, device, B=2, H=4, Tq=128, Tk=128,
                    D=64, causal=False, bias_heads=True, seed=0) -> ParityResult:
    """``impl(q, k, v, bias, key_padding_mask, causal)`` against ``reference_attention``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    base = {
        "q": torch.randn(B, H, Tq, D, generator=g, **f64) * (2 * D) ** -0.5,
        "k": torch.randn(B, H, Tk, D, generator=g, **f64),
        "v": torch.randn(B, H, Tk, D, generator=g, **f64),
        "bias": torch.randn(B, H if bias_heads else 1, Tq, Tk, generator=g, **f64),
    }
    pad = torch.zeros(B, Tk, dtype=torch.bool)
    pad[-1, Tk - max(1, Tk // 8):] = True  # right padding on the last sample
    pad = pad.to(device)
    grad_out = torch.randn(B, H, Tq, D, generator=g, **f64).to(device)
    names = ["q", "k", "v", "bias"]

    def call(fn):
        return lambda a: fn(a["q"], a["k"], a["v"], a["bias"], pad, causal)

    truth = _run_with_grads(call(reference_attention), {k: v.to(device) for k, v in base.items()},
                            names, grad_out)
    cast = {k: v.to(device=device, dtype=dtype) for k, v in base.items()}
    ref = _run_with_grads(call(reference_attention), cast, names, grad_out)
    got = _run_with_grads(call(impl), cast, names, grad_out)
    return _judge(ParityResult(name, str(dtype).removeprefix("torch.")), got, ref, truth)


def check_bias_gelu(impl: Callable, name: str, *, dtype, device, shape=(8, 256, 1024), seed=0) -> ParityResult:
    g = torch.Generator(device="cpu").manual_seed(seed)
    base = {"x": torch.randn(*shape, generator=g, dtype=torch.float64) * 2,
            "b": torch.randn(shape[-1], generator=g, dtype=torch.float64)}
    grad_out = torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
    names = ["x", "b"]
    truth = _run_with_grads(lambda a: bias_gelu_eager(a["x"], a["b"]), {k: v.to(device) for k, v in base.items()},
                            names, grad_out)
    cast = {k: v.to(device=device, dtype=dtype) for k, v in base.items()}
    ref = _run_with_grads(lambda a: bias_gelu_eager(a["x"], a["b"]), cast, names, grad_out)
    got = _run_with_grads(lambda a: impl(a["x"], a["b"]), cast, names, grad_out)
    return _judge(ParityResult(name, str(dtype).removeprefix("torch.")), got, ref, truth)


def check_bias_dropout_add(impl: Callable, name: str, *, dtype, device, shape=(8, 256, 1024),
                           seed=0) -> list[ParityResult]:
    """Without dropout (drop-path scale on): parity. With dropout: the mask has the right
    rate, kept values are scaled by 1/(1-p), and backward uses the same mask."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    base = {"x": torch.randn(*shape, generator=g, dtype=torch.float64),
            "b": torch.randn(shape[-1], generator=g, dtype=torch.float64),
            "r": torch.randn(*shape, generator=g, dtype=torch.float64)}
    scale = torch.where(torch.arange(shape[0]) % 3 == 0, 0.0, 1.0 / 0.9).to(device)
    grad_out = torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
    names = ["x", "b", "r"]
    fn = lambda f: (lambda a: f(a["x"], a["b"], a["r"], 0.1, False, scale))  # noqa: E731
    truth = _run_with_grads(fn(bias_dropout_add_eager), {k: v.to(device) for k, v in base.items()}, names, grad_out)
    cast = {k: v.to(device=device, dtype=dtype) for k, v in base.items()}
    ref = _run_with_grads(fn(bias_dropout_add_eager), cast, names, grad_out)
    got = _run_with_grads(fn(impl), cast, names, grad_out)
    results = [_judge(ParityResult(name + " (no dropout)", str(dtype).removeprefix("torch.")), got, ref, truth)]

    p = 0.25
    x = cast["x"].clone().requires_grad_()
    out = impl(x, None, cast["r"], p, True, None)
    go = torch.ones_like(out)
    (dx,) = torch.autograd.grad(out, (x,), go)
    kept = dx != 0
    frac = kept.float().mean().item()
    dropped_exact = torch.equal(out[~kept], cast["r"][~kept])
    kept_err = rel_err(out[kept] - cast["r"][kept], (x.detach()[kept].double() / (1 - p)))
    # The kept fraction is binomial: allow 5 standard deviations.
    ok = abs(frac - (1 - p)) < 5 * (p * (1 - p) / kept.numel()) ** 0.5 and dropped_exact and kept_err < 4 * FLOOR[dtype]
    results.append(ParityResult(name + f" (dropout p={p})", str(dtype).removeprefix("torch."), passed=ok,
                                note=f"kept {frac:.4f} (want {1 - p}), dropped==residual {dropped_exact}, "
                                     f"kept rel err {kept_err:.1e}"))
    return results


def check_layer_norm(module_cls, name: str, *, dtype, device, shape=(8, 256, 1024), seed=0) -> ParityResult:
    g = torch.Generator(device="cpu").manual_seed(seed)
    D = shape[-1]
    base = {"x": torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1,
            "w": 1 + 0.1 * torch.randn(D, generator=g, dtype=torch.float64),
            "b": 0.1 * torch.randn(D, generator=g, dtype=torch.float64)}
    grad_out = torch.randn(*shape, generator=g, dtype=torch.float64).to(device)
    names = ["x", "w", "b"]

    def via(cls):
        def run(a):
            m = cls(D, eps=1e-5).to(device=device, dtype=a["x"].dtype)
            return torch.func.functional_call(m, {"weight": a["w"], "bias": a["b"]}, (a["x"],))
        return run

    truth = _run_with_grads(via(torch.nn.LayerNorm), {k: v.to(device) for k, v in base.items()}, names, grad_out)
    cast = {k: v.to(device=device, dtype=dtype) for k, v in base.items()}
    ref = _run_with_grads(via(torch.nn.LayerNorm), cast, names, grad_out)
    got = _run_with_grads(via(module_cls), cast, names, grad_out)
    return _judge(ParityResult(name, str(dtype).removeprefix("torch.")), got, ref, truth)
