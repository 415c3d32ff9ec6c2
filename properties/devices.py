"""The device axis: a GPU oracle is compared with the reference like any side, and also with the same
oracle on the CPU (the CPU-vs-GPU differential) and with itself (run-to-run spread: atomics in
scatter/index_add/conv backward make some GPU backwards nondeterministic, CONVENTIONS row 16).
Spread is reported apart from error, so nondeterminism is never mistaken for a wrong gradient.
"""
from __future__ import annotations

import numpy as np

from oracles.base import Projection

from .compare import compare
from .evaluate import policy_for

__all__ = ["device_figures"]


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
        again = target.oracle_vjp(oracle)(target.oracle_forward(oracle), ev.arrays, ev.case.params, ev.douts,
                                          dtype=ev.dtype, device=device)
        out["run_to_run_spread"] = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(again.grads[n], np.float64)),
                                                     initial=0.0))
                                        for n, a in _arrays(v.result).items()), default=0.0)
    except Exception as e:  # a second run failing is itself worth reporting
        out["run_to_run_spread"] = None
        out["device_note"] = f"repeat failed: {type(e).__name__}: {e}"
    cpu = ev.sides.get((oracle, "cpu"))
    if cpu is not None and cpu.result is not None:
        pol = policy_for(ev, oracle, override=override)
        worst = None
        for n, g in _arrays(v.result).items():
            c = compare(g, cpu.result.grads[n], pol, ulp_dtype=ev.dtype)
            if worst is None or c.ratio > worst.ratio:
                worst = c
        if worst is not None:
            out["cpu_gpu"] = {"agree": bool(worst.ok), "max_abs_err": worst.max_abs, "max_rel_err": worst.max_rel,
                              "max_ulp": worst.max_ulp}
    return out
