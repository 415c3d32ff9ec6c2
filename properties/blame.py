"""Blame: which side of a failing case is out. The failing case is compared against every oracle
available (not only the requested ones); the oracles that agree with each other and not with the
target blame the target (`reference`); one that alone disagrees is `oracle:<name>`. A float32 gap
that would blame the target but closes when the same case runs in float64 is `precision` (the
formula is right; float32 rounding is not enough for how it is evaluated), never a structural
pattern; TF32 in force on a GPU is named as such.
"""
from __future__ import annotations

import oracles
from oracles.base import OracleResult, Projection

from .evaluate import Evaluation, compare_any, classify_kinks, evaluate, judge_side, policy_for
from .spec import Case
from .spec import OpSpec
from .target import Target
from .verdict import Side, Verdict

__all__ = ["PRECISION", "blame_precision", "closes_in_float64", "explain_tf32", "oracles_agree", "tf32_in_force",
           "triangulate"]

INHERITED_FORWARD = ("the target's forward already disagrees with the frameworks; its finite differences "
                     "inherit that")


def _forward_failed(v: Verdict) -> bool:
    return v.kind == "forward" or (v.kind == "nonfinite" and v.phase == "forward")


def triangulate(spec: OpSpec | None, target: Target, ev: Evaluation) -> None:
    """Set `blame` and `triangulation` on every failing side of `ev` (adding the sides not run yet)."""
    if ev.error is not None or ev.shape_mismatch is not None:
        # the forward raised, or its output has the wrong shape: the target's own doing
        for v in ev.sides.values():
            v.blame = "reference"
        return
    devices = sorted({d for _, d in ev.sides} | {"cpu"})
    all_sides = [(o, d) for o in oracles.ORACLES for d in devices if not (o == "numeric" and d != "cpu")]
    for s in all_sides:
        if s not in ev.sides:
            ev.sides[s] = judge_side(spec, target, ev, *s)
    classify_kinks(spec, target, ev)
    for v in ev.sides.values():
        if v.status == "error" and ev.backward_error is not None and v.fault == ev.backward_error:
            v.blame = "reference"  # the backward raised or returned something malformed
    usable = {s: v for s, v in ev.sides.items() if v.status in ("pass", "fail", "kink") and v.result is not None}
    names = list(ev.grads)
    override = spec.tolerance if spec else None
    # forwards first: the numeric oracle differentiates the target's own forward, so once that forward
    # is out, numeric's verdict follows it
    order = sorted(ev.sides.items(), key=lambda kv: not _forward_failed(kv[1]))
    forward_blamed = False
    for s, v in order:
        if v.status != "fail":
            continue
        tri = {f"{o}:{d}": ("skip" if o2.status in ("skip", "error") else
                            "agree" if o2.status in ("pass", "kink") else "disagree")
               for (o, d), o2 in ev.sides.items()}
        others = [o for o in usable if o != s]
        if v.kink is not None:
            # settled by the target alone: its choice at a kink is no subgradient
            v.blame = "reference"
        elif _forward_failed(v):
            with_out = [o for o in others if usable[o].result.out is not None]
            agree = [o for o in with_out if usable[o].status == "fail" and _forward_failed(usable[o])]
            v.blame = ("reference" if with_out and len(agree) == len(with_out)
                       else f"oracle:{s[0]}" if with_out else "unknown")
            forward_blamed |= v.blame == "reference"
        elif s[0] == "numeric" and forward_blamed:
            v.blame = "reference"
            if target.numeric_inherits_forward:
                v.notes.append(INHERITED_FORWARD)
        else:
            with_me = [o for o in others if oracles_agree(usable[s].result, usable[o].result, names, ev, s[0], o[0],
                                                          override)]
            with_ref = [o for o in others if usable[o].status in ("pass", "kink")]
            tri["agree_with_each_other"] = bool(others) and len(with_me) == len(others)
            # a side within its tolerance of both (finite differences resolve ~1e-5, the frameworks
            # ~1e-13) cannot tell the two apart: it does not vote
            voters = [o for o in others if not (o in with_me and o in with_ref)]
            if voters and all(o in with_me for o in voters):
                v.blame = "reference"
            elif voters and all(o in with_ref for o in voters):
                v.blame = f"oracle:{s[0]}"
            else:
                v.blame = "unknown"
        if v.blame in ("reference", "unknown") and v.kink is None and ev.dtype != "float64" \
                and closes_in_float64(spec, target, ev, s):
            blame_precision(v)
            forward_blamed = False if _forward_failed(v) else forward_blamed
        explain_tf32(ev, s, v)
        v.triangulation = tri


def closes_in_float64(spec: OpSpec | None, target: Target, ev: Evaluation, side: Side) -> bool:
    """Does the same case (the float32 inputs, exactly, and the same upstream gradient and random
    stream) pass on `side` in float64?"""
    key = ("float64", side)
    if key not in ev.memo:
        case = Case({n: a.astype("float64") for n, a in ev.arrays.items()}, ev.case.params)
        ev64 = evaluate(spec, target, case, "float64", [side], douts=ev.douts, stream=ev.stream)
        ev.memo[key] = ev64.sides[side].status in ("pass", "kink")
    return ev.memo[key]


PRECISION = ("the same case passes in float64: the formula is right; float32's rounding or range is not "
             "enough for how it is evaluated here")


def blame_precision(v: Verdict) -> None:
    """A float32 fail that closes in float64: the formula is right, float32 is not enough for how it is
    evaluated. No structural pattern: a pattern would point at a bug that is not there."""
    v.blame, v.pattern, v.factor = "precision", None, None
    v.why = [PRECISION]


def oracles_agree(a: OracleResult, b: OracleResult, names, ev: Evaluation, oracle_a: str, oracle_b: str,
                  override=None) -> bool:
    """Do two oracles agree with each other on this case (gradients, and forwards where both have one)?"""
    looser = "numeric" if "numeric" in (oracle_a, oracle_b) else oracle_a
    pol = policy_for(ev, looser, override=override)
    for n in names:
        ga, gb = a.grads[n], b.grads[n]
        if isinstance(ga, Projection) and isinstance(gb, Projection):
            continue
        if isinstance(ga, Projection):
            ga, gb = gb, ga
        if not compare_any(ga, gb, pol, ev.dtype).ok:
            return False
    return True


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


def explain_tf32(ev: Evaluation, side: Side, verdict: Verdict) -> bool:
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
    verdict.pattern, verdict.factor = "tf32", None
    verdict.blame = "precision"
    verdict.notes.append(f"TF32 in force on the GPU: float32 matmuls and convolutions keep 10 mantissa bits; "
                         f"{oracle} on the CPU agrees with the reference")
    return True
