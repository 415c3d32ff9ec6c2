"""LayerNorm over the last axis as a torch.autograd.Function, with a hand-written backward that works
in double backward too (a gradient penalty differentiates the gradient):

    x̂ = (x − μ) / σ,   y = γ x̂ + β,   σ = sqrt(var(x) + eps)
    dx = (γ·g − mean(γ·g) − x̂ · mean(γ·g · x̂)) / σ,   dγ = Σ_N g·x̂,   dβ = Σ_N g

It saves its inputs and recomputes x̂ and σ in backward with differentiable torch ops, so autograd can
differentiate the backward itself (order=2 checks that). Like the fused kernels it stands for, it
computes in float32 at least (float16 and bfloat16 inputs are upcast, the result cast back): in
float16 the formula's cancellations, divided by a small σ, cost ~20x the error of autograd's own
float16 computation, which the reference-relative check reports.

`LayerNormKeptIntermediates` is its planted twin: the everyday version that keeps x̂ and 1/σ on ctx.
Its backward is right — `gradcheck` passes — but x̂ and 1/σ were computed in forward, where autograd
records no graph: the double backward takes them as constants and is silently wrong (pytorch
#76185).

    gradaudit audit examples/functions/layernorm.py --dtypes float64
"""
import numpy as np
import torch

import gradaudit

EPS = 1e-5


def _acc(t):
    """At least float32: the precision the statistics are computed in."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta):
        xa = _acc(x)
        mu = xa.mean(dim=-1, keepdim=True)
        sigma = torch.sqrt(((xa - mu) ** 2).mean(dim=-1, keepdim=True) + EPS)
        ctx.save_for_backward(x, gamma)
        return (_acc(gamma) * (xa - mu) / sigma + _acc(beta)).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, gamma = ctx.saved_tensors
        xa, ga = _acc(x), _acc(g)
        mu = xa.mean(dim=-1, keepdim=True)
        sigma = torch.sqrt(((xa - mu) ** 2).mean(dim=-1, keepdim=True) + EPS)
        xhat = (xa - mu) / sigma
        gx = ga * _acc(gamma)
        dx = (gx - gx.mean(dim=-1, keepdim=True) - xhat * (gx * xhat).mean(dim=-1, keepdim=True)) / sigma
        return dx.to(x.dtype), (ga * xhat).sum(dim=0).to(gamma.dtype), ga.sum(dim=0).to(gamma.dtype)


class LayerNormKeptIntermediates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta):
        xa = _acc(x)
        mu = xa.mean(dim=-1, keepdim=True)
        rstd = torch.rsqrt(((xa - mu) ** 2).mean(dim=-1, keepdim=True) + EPS)
        xhat = (xa - mu) * rstd
        ctx.save_for_backward(gamma)
        ctx.xhat, ctx.rstd = xhat, rstd  # planted: intermediates without a graph
        return (_acc(gamma) * xhat + _acc(beta)).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (gamma,) = ctx.saved_tensors
        xhat, rstd, ga = ctx.xhat, ctx.rstd, _acc(g)
        gx = ga * _acc(gamma)
        dx = (gx - gx.mean(dim=-1, keepdim=True) - xhat * (gx * xhat).mean(dim=-1, keepdim=True)) * rstd
        return dx.to(g.dtype), (ga * xhat).sum(dim=0).to(gamma.dtype), ga.sum(dim=0).to(gamma.dtype)


def layernorm(xp, x, gamma, beta):
    """The same forward against the array-API namespace `xp`: what the other framework (JAX) runs."""
    mu = xp.mean(x, axis=-1, keepdims=True)
    var = xp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return gamma * (x - mu) / xp.sqrt(var + EPS) + beta


def centering_condition(case):
    """|x| / σ, row by row: x − μ cancels log10(|x|/σ) digits, and x̂ and its derivatives divide by σ
    (down to sqrt(eps), 3e-3, on a near-constant row), so two correct float32 computations differ by
    ~eps·|x|/σ relative (measured: 3.9e-5 against the policy's 3.75e-5 in the double backward of a
    two-feature row). The catalogue's layernorm has the same override."""
    x = np.asarray(case.arrays["x"], dtype=np.float64)
    sigma = np.sqrt(x.var(axis=-1) + EPS)
    return float(np.max(np.abs(x).max(axis=-1, initial=0.0) / sigma, initial=1.0))


# rows of at least two features: the normalisation of one feature is 0 whatever x is
SHAPES = dict(x=("N", "D"), gamma=("D",), beta=("D",))
SIZES = {"D": (2, 3, 4, 5)}
TOLERANCE = (centering_condition, "condition number |x|/σ of the centring x − μ (see centering_condition)")

layer_norm = gradaudit.function(LayerNorm, reference=layernorm, order=2, sizes=SIZES, tolerance=TOLERANCE, **SHAPES)
layer_norm_kept = gradaudit.function(LayerNormKeptIntermediates, reference=layernorm, order=2, sizes=SIZES,
                                     tolerance=TOLERANCE, **SHAPES)
