"""The device axis: a GPU oracle is compared with the reference like any side, and also with the same
oracle on the CPU (the CPU-vs-GPU differential) and with itself (run-to-run spread: atomics in
scatter/index_add/conv backward make some GPU backwards nondeterministic, CONVENTIONS row 16).
Spread is reported apart from error, so nondeterminism is never mistaken for a wrong gradient.
"""
from __future__ import annotations

import numpy as np

import oracles
from oracles.base import Projection

from .compare import compare
from .evaluate import _policy


def _arrays(result):
    return {n: g for n, g in result.grads.items() if not isinstance(g, Projection)}


def device_figures(target, ev, side, override=None) -> dict:
    """For a non-CPU side of an evaluated case: run-to-run spread and agreement with the CPU.

    The two devices are held to the tolerance each is held to against the reference (the op's own
    condition factor included, `override`): batchnorm and layernorm on near-constant rows amplify
    float32 rounding by |x|/sigma on both devices alike, and that is no device difference."""
    oracle, device = side
    v = ev.sides.get(side)
    if device == "cpu" or v is None or v.result is None:
        return {}
    out = {}
    try:
        again = oracles.get(oracle).vjp(target, ev.arrays, ev.case.params, ev.douts, dtype=ev.dtype, device=device)
        out["run_to_run_spread"] = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(again.grads[n], np.float64)),
                                                     initial=0.0))
                                        for n, a in _arrays(v.result).items()), default=0.0)
    except Exception as e:  # a second run failing is itself worth reporting
        out["run_to_run_spread"] = None
        out["device_note"] = f"repeat failed: {type(e).__name__}: {e}"
    cpu = ev.sides.get((oracle, "cpu"))
    if cpu is not None and cpu.result is not None:
        pol = _policy(ev, oracle, override=override)
        worst = None
        for n, g in _arrays(v.result).items():
            c = compare(g, cpu.result.grads[n], pol, ulp_dtype=ev.dtype)
            if worst is None or c.ratio > worst.ratio:
                worst = c
        if worst is not None:
            out["cpu_gpu"] = {"agree": bool(worst.ok), "max_abs_err": worst.max_abs, "max_rel_err": worst.max_rel,
                              "max_ulp": worst.max_ulp}
    return out


# torch's flags name TF32 outright; JAX's precision setting "tensorfloat32" (and the lower
# "bfloat16"/"default" on GPU) computes float32 dot and conv with fewer mantissa bits
_JAX_REDUCED = ("tensorfloat32", "bfloat16", "default", "fastest", "bfloat16_3x")


def tf32_in_force(oracle: str, device: str, dtype: str) -> bool:
    """Whether TF32 (or a lower matmul precision) applied to this side's float32 matmuls and convolutions."""
    if device == "cpu" or dtype != "float32":
        return False
    try:
        flags = oracles.get(oracle).flags()
    except Exception:
        return False
    return bool(flags.get("tf32_matmul") or flags.get("tf32_cudnn")
                or str(flags.get("jax_matmul_precision", "highest")).lower() in _JAX_REDUCED)


def explain_tf32(ev, side, verdict) -> bool:
    """A float32 GPU side that fails while TF32 is in force and the same oracle on the CPU agrees with
    the reference: TF32 rounds matmul/conv inputs to 10 mantissa bits (relative error ~1e-3, against
    float32's ~6e-8) in the forward and the backward, which the tolerance policy deliberately does not
    absorb. Name it as such."""
    oracle, device = side
    cpu = ev.sides.get((oracle, "cpu"))
    if verdict.status != "fail" or verdict.kind not in ("gradient", "forward") or not tf32_in_force(oracle, device, ev.dtype):
        return False
    if cpu is None or cpu.status not in ("pass", "kink"):
        return False
    verdict.pattern = "tf32"
    verdict.blame = "precision"
    verdict.message += (" (TF32 in force on the GPU: float32 matmuls and convolutions keep 10 mantissa bits; "
                        f"{oracle} on the CPU agrees with the reference)")
    return True
