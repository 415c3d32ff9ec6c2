"""Name the shape of a wrong gradient, when it has a recognisable one, and say it in a sentence a
student can act on. The only place that names one: the record carries the name and the sentence
(`explanation`), the case file the factor, and every display (terminal, report, JUnit, notebook)
shows the sentence as it is.

`SENTENCES` is the one table of those sentences. A recogniser fills in its fields (which gradient,
the factor, the timestep, the stride); a pattern named elsewhere (`credit_at_ties` and
`invalid_subgradient` by an op's subgradient test, `tf32` by the blame) gets its sentence through
`explain(pattern)`.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from oracles.base import Projection

__all__ = ["SENTENCES", "Finding", "explain", "recognise", "recognise_case", "recognise_nonfinite",
           "recognise_projection", "recognise_shape"]

# pattern -> what the student reads before any number. Fields in braces come from the finding;
# "pattern:variant" keys are other wordings of one pattern (the record names the pattern alone).
SENTENCES = {
    "credit_at_ties": "your backward gives the gradient to every tied maximum of a window; it belongs to one "
                      "of them (the first, say), or is split between them",
    "invalid_subgradient": "at a kink (ReLU at exactly 0, a hinge at its corner) your backward takes a "
                           "derivative outside the one-sided ones; use one side's derivative there (0 or 1)",
    "overwrite": "you assign `{grad}[window] = …` where windows overlap ({overlap}), so each element keeps "
                 "only the last window's share; accumulate with `+=`",
    "overwrite:index": "you write `{grad}[idx] = …` (or `+=`) with an index that repeats ({repeats}); NumPy "
                       "applies one write per distinct index, so the repeats are lost: accumulate with "
                       "`np.add.at({grad_var}, idx, …)`",
    "pad_zero_slice": "with pad = 0 your slice `[pad:-pad]` is empty (-0 is 0, so it means `[0:0]`); crop "
                      "with `[pad:pad + H, pad:pad + W]`",
    "missing_sum": "{grad} has shape {got}, but {array} has shape {want}: the forward broadcasts {array} over "
                   "{axes}, so its gradient sums dout over {them}: `.sum(axis={axis_arg})`",
    "overflow": "your code overflows where the frameworks stay finite: your inputs reach {xmax}, and in {dtype} "
                "{where}; {stable}",
    "constant_factor": "your {grad} is {factor} times the right one{hint}",
    "sign_flip": "your {grad} has the wrong sign: a difference written the other way round (p − y for y − p), "
                 "or a minus lost in the chain rule",
    "zero_gradient": "your {grad} is zero where the right one is not: a term never added in, or a result "
                     "never written into the array you return",
    "transpose": "your {grad} is the transpose of the right one: swap the operands of the product "
                 "(x.T @ dout, not dout.T @ x) or drop a .T",
    "wrong_axis": "your {grad} is the same along axis {axis}, where the right one varies: a sum over the wrong "
                  "axis (check axis= and keepdims=True)",
    "one_slice": "your {grad} is right everywhere except at index {index} of axis {axis}: a term missing or "
                 "counted twice for that one slice (a loop bound off by one?)",
    "timestep": "your backward loop gets timestep {t} of {T} wrong{how}: BPTT visits every step from T-1 down "
                "to 0 (`for t in reversed(range(T))`) and pairs step t with its own cache",
    "tf32": "TF32 on the GPU rounds float32 matmuls and convolutions to 10 mantissa bits; the same oracle on "
            "the CPU agrees, so your derivation is not at fault",
    # a gradaudit.function subject's rule (gradaudit/_subject.py), where autograd's engine would hide it
    "wrong_dtype": "your rule returns {grad} as {got}, but {array} is {want}: autograd casts it back silently "
                   "(jax.grad passes it on), and the precision is lost on the way; compute it in, or cast it to, "
                   "its input's dtype",
    "batching": "your rule's gradients for a batch of upstream gradients (vmap) differ from those computed one "
                "at a time: it mixes the batch axis into the computation, or leaves the tensors (.tolist(), "
                ".item(), NumPy) where vmap cannot follow",
    "ctx_intermediate": "your Function keeps {kept} for backward: computed in forward without a graph, they are "
                        "constants to a double backward, which comes out wrong; save the inputs and recompute "
                        "them in backward, or return them as outputs",
}


def explain(pattern: str | None, **fields) -> str | None:
    """The sentence of `pattern` (or of a variant, `pattern:variant`), its fields filled in; None for
    no pattern, or for a sentence whose fields were not given."""
    if not pattern or pattern not in SENTENCES:
        return None
    try:
        return SENTENCES[pattern].format(**fields)
    except (KeyError, IndexError):
        return None


class Finding(NamedTuple):
    pattern: str  # a key of SENTENCES (without its variant)
    why: str  # one technical clause for the verdict's message
    factor: float | None = None  # reference = factor x oracle (constant_factor, sign_flip)
    explanation: str | None = None  # the sentence a student reads first


def _finding(pattern: str, why: str, value: float | None = None, variant: str | None = None, **fields) -> Finding:
    return Finding(pattern, why, value, explain(f"{pattern}:{variant}" if variant else pattern, **fields))


def _var(name: str) -> str:
    """`grad[x]` -> `dx`: how a student names the array in their code."""
    m = re.fullmatch(r"grad\[(.+)\]", name)
    return f"d{m.group(1)}" if m else name


def _close(a, b, tol=1e-6) -> bool:
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-300)
    return bool(np.abs(a - b).max(initial=0.0) <= tol * scale)


# ---- constant factors ---------------------------------------------------------------------------

def _round_factor(c: float, rel: float = 1e-6) -> str | None:
    """'N', '1/N' or 'p/q' for a factor a derivation plausibly gets wrong by; None for an arbitrary one."""
    for q in range(1, 65):
        p = round(c * q)
        if p != 0 and abs(c * q - p) < rel * abs(p) and abs(p) <= 64:
            return f"{p}" if q == 1 else f"{p}/{q}"
    return None


def _axes_of_size(k: int, shapes: dict | None) -> list[str]:
    return [f"{name}.shape[{i}]" for name, shape in (shapes or {}).items() for i, n in enumerate(shape) if n == k]


def _products_of_size(k: int, shapes: dict | None) -> list[str]:
    """`x.shape[0]·x.shape[1]` for two axes of one array whose sizes multiply to k (1/(N·T) forms)."""
    out = []
    for name, shape in (shapes or {}).items():
        for i in range(len(shape)):
            for j in range(i + 1, len(shape)):
                if shape[i] > 1 and shape[j] > 1 and shape[i] * shape[j] == k:
                    out.append(f"{name}.shape[{i}]·{name}.shape[{j}]")
    return out


def _irrational_factors(shapes: dict | None) -> list[tuple[str, float, str]]:
    """(label, value, what it suggests) of the irrational constants a derivation gets wrong by: √2 and
    π from Gaussians and GELU, √d from attention's scaling, for every axis size d that is no square."""
    out, seen = [], set()
    for name, shape in (shapes or {}).items():
        for i, d in enumerate(shape):
            if d >= 2 and d not in seen and math.isqrt(d) ** 2 != d:
                seen.add(d)
                out.append((f"√{d}", math.sqrt(d), f"√{d} = √{name}.shape[{i}]: a 1/√d scaling missed or "
                                                   f"taken twice"))
    constant = "a constant of the forward ({}) missed or taken twice in the chain rule"
    out += [(label, value, constant.format(label)) for label, value in (
        ("√2", math.sqrt(2)), ("√3", math.sqrt(3)), ("π", math.pi), ("√π", math.sqrt(math.pi)),
        ("√(2π)", math.sqrt(2 * math.pi))) if label[1:] not in map(str, seen)]
    return out


def _factor_name(c: float, rel: float, shapes: dict | None) -> tuple[str, str] | None:
    """How to write the factor c: ('1/3', hint), ('1/√2', hint), ('2π', hint)...; None when it is no
    small rational multiple of a constant a derivation plausibly gets wrong by."""
    r = _round_factor(c, rel)
    if r is not None:
        if r == "1":
            return None
        m = re.fullmatch(r"-?(1/)?(\d+)", r)
        hint = ""
        if m and int(m.group(2)) >= 2:
            k = int(m.group(2))
            axes = (_axes_of_size(k, shapes) or _products_of_size(k, shapes))[:3]
            if axes:
                what = ("divided by that size once too often (a mean where the forward sums?)" if m.group(1)
                        else "an extra factor of that size (a missing 1/N?)")
                hint = f"; {k} = {', '.join(axes)}: {what}"
        return r, hint
    for label, s, what in _irrational_factors(shapes):
        for power in (1, -1):
            q = _round_factor(c / s ** power, rel)
            if q is None:
                continue
            frac = Fraction(q)
            if frac.numerator and abs(frac.numerator) <= 8 and frac.denominator <= 8:
                num, den = frac.numerator, frac.denominator
                top = (f"{'-' if num < 0 else ''}{label}" if abs(num) == 1 else f"{num}{label}") if power == 1 \
                    else str(num)
                bottom = [str(den)] if den != 1 else []
                if power == -1:
                    bottom.append(label)
                name = top + (f"/{'·'.join(bottom)}" if len(bottom) == 1 else f"/({'·'.join(bottom)})" if bottom
                              else "")
                return name, (f"; {what}" if what else "")
    return None


def _factor_finding(name: str, c: float, factor: tuple[str, str]) -> Finding:
    label, hint = factor
    why = f"{name} is off by a constant factor {label} (ref = {c:.6g} x oracle)" + hint
    return _finding("constant_factor", why, c, grad=name, factor=label, hint=hint)


# ---- element by element --------------------------------------------------------------------------

def recognise(ref: np.ndarray, oracle: np.ndarray, *, name: str = "grad", seq_axis: int | None = None,
              shapes: dict | None = None) -> Finding | None:
    """The pattern of the reference gradient `ref` against the correct `oracle` (element by element).
    `seq_axis`: the time axis of a recurrent op's array, where an error at one index is a timestep."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(oracle, dtype=np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    if np.abs(b).max(initial=0.0) == 0:
        return None
    if np.abs(a).max(initial=0.0) == 0:
        if seq_axis is not None and a.shape[seq_axis] == 1:  # the whole sequence is one step, never visited
            return _timestep(name, 0, 1, " (it is never back-propagated: with T = 1 the loop runs no step)")
        return _finding("zero_gradient", f"{name} is identically zero", grad=name)
    if _close(a, -b):
        return _finding("sign_flip", f"{name} has the wrong sign", -1.0, grad=name)
    c = float(np.vdot(a, b) / np.vdot(b, b))
    if _close(a, c * b, 1e-5):
        factor = _factor_name(c, 1e-6, shapes)
        # a one-element gradient is always "a multiple" of the right one: of one number against another,
        # only an integer or 1/N factor says anything at float32's precision, and another named constant
        # (√2, π, p/q) only when it holds to 1e-9 (a chance match of an arbitrary ratio: ~1e-6)
        if a.size == 1 and factor is not None and not re.fullmatch(r"-?\d+|-?1/\d+", factor[0]):
            factor = _factor_name(c, 1e-9, shapes)
        if factor is not None:
            return _factor_finding(name, c, factor)
    if a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] > 1 and _close(a, b.T):
        return _finding("transpose", f"{name} is the transpose of the right gradient", grad=name)
    err = np.abs(a - b)
    scale = max(np.abs(b).max(), 1e-300)
    if seq_axis is not None:
        found = _shifted_steps(a, b, seq_axis, name, scale)
        if found is not None:
            return found
    # error confined to one index along one axis: a term missing at one timestep/row/channel
    axes = [seq_axis] if seq_axis is not None else range(a.ndim)
    for ax in axes:
        if a.shape[ax] < 2:
            continue
        per = err.max(axis=tuple(i for i in range(a.ndim) if i != ax))
        wrong = np.flatnonzero(per > 1e-6 * scale)
        if len(wrong) == 1:
            t = int(wrong[0])
            if ax == seq_axis:
                missing = np.abs(a.take([t], axis=ax)).max(initial=0.0) == 0
                how = " (its gradient is never computed)" if missing else ""
                return _timestep(name, t, a.shape[ax], how)
            return _finding("one_slice", f"{name} is wrong only at index {t} of axis {ax}", grad=name, index=t,
                            axis=ax)
    # summed over the wrong axis: the reference is constant along an axis where the truth varies
    for ax in range(a.ndim):
        if a.shape[ax] > 1 and _close(a, np.broadcast_to(a.take([0], axis=ax), a.shape), 1e-9) \
                and not _close(b, np.broadcast_to(b.take([0], axis=ax), b.shape), 1e-6):
            return _finding("wrong_axis", f"{name} is constant along axis {ax}, the right gradient is not "
                                          f"(a sum over the wrong axis?)", grad=name, axis=ax)
    return None


def _timestep(name: str, t: int, T: int, how: str) -> Finding:
    return _finding("timestep", f"{name} is wrong only at timestep {t} of {T}{how}", grad=name, t=t, T=T, how=how)


def _shifted_steps(a, b, ax: int, name: str, scale: float) -> Finding | None:
    """Step t's gradient written into slot t-1 (or t+1): an index off by one in the BPTT loop."""
    n = a.shape[ax]
    if n < 2:
        return None
    for k, where in ((-1, "t-1"), (1, "t+1")):
        # with k = -1: a[t-1] == b[t] for t >= 1 (the slot a shift leaves behind is whatever it is)
        lo_a, hi_a = (0, n - 1) if k == -1 else (1, n)
        lo_b, hi_b = (1, n) if k == -1 else (0, n - 1)
        sa = np.take(a, range(lo_a, hi_a), axis=ax)
        sb = np.take(b, range(lo_b, hi_b), axis=ax)
        if np.abs(sb).max(initial=0.0) > 1e-3 * scale and _close(sa, sb, 1e-6) and not _close(a, b, 1e-6):
            return _timestep(name, n - 1 if k == -1 else 0, n, f" (step t's gradient lands in slot {where})")
    return None


# ---- with the whole case: windows, repeated indices, the time axis ----------------------------------

SEQUENCE_OPS = re.compile(r"rnn|lstm|gru|bptt|recurr|sequence")


def recognise_case(ev, name: str, theirs: dict, *, op: str = "", allowed=None) -> Finding | None:
    """The pattern of grad[name] on a whole evaluation (`ev`: its arrays, params and gradients;
    `theirs`: the oracle's gradients by name, arrays or projections; `allowed`: the judge's allowed
    error for projections): what needs the case (overlapping windows, repeated indices, which axis
    is time) first, then the element-by-element shapes of `recognise`."""
    label, shapes = f"grad[{name}]", ev.case.shapes()
    mine, other = ev.grads[name], theirs[name]
    if isinstance(other, Projection):
        dirs = np.asarray(other.dirs, np.float64)
        proj = dirs.reshape(dirs.shape[0], -1) @ np.asarray(mine, np.float64).reshape(-1)
        return recognise_projection(proj, other.values, allowed, name=label, shapes=shapes)
    found = _overwrite(ev, name, mine, other)
    if found is not None:
        return found
    seq = SEQUENCE_OPS.search(op or "") is not None
    steps = [np.shape(g)[1] for g in ev.grads.values() if np.ndim(g) == 3]
    if seq and steps == [1] * len(steps) and steps and all(
            np.abs(np.asarray(g, np.float64)).max(initial=0.0) == 0 for g in ev.grads.values()):
        # one step, and not one gradient: the loop over the steps never ran
        return _timestep(label, 0, 1, " (it is never back-propagated: with T = 1 the loop runs no step)")
    for n, g in ev.grads.items():  # a recurrent op: the time axis of its input shows an off-by-one step first
        if seq and np.ndim(g) == 3 and not isinstance(theirs.get(n), Projection) and n != name:
            found = recognise(g, theirs[n], name=f"grad[{n}]", seq_axis=1, shapes=shapes)
            if found is not None and found.pattern == "timestep":
                return found
    seq_axis = 1 if seq and np.ndim(mine) == 3 else None
    return recognise(mine, other, name=label, seq_axis=seq_axis, shapes=shapes)


def _coverage(size: int, window: int, stride: int, pad: int) -> np.ndarray:
    """How many windows cover each of `size` input positions (windows over the padded input)."""
    padded = size + 2 * pad
    n_out = 1 + (padded - window) // stride if padded >= window else 0
    cov = np.zeros(padded, dtype=np.int64)
    for i in range(n_out):
        cov[i * stride:i * stride + window] += 1
    return cov[pad:pad + size]


def _overwrite(ev, name: str, mine, other) -> Finding | None:
    a, b = np.asarray(mine, np.float64), np.asarray(other, np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    wrong = np.abs(a - b) > 1e-6 * scale
    if not wrong.any():
        return None
    params = ev.case.params
    # windows: a conv's (its weight gives the window) or a pooling's, over an NCHW input
    stride = params.get("stride")
    if a.ndim == 4 and isinstance(stride, (int, np.integer)) and stride >= 1:
        if "pool_height" in params:
            window = (int(params["pool_height"]), int(params["pool_width"]))
        elif "w" in ev.arrays and np.ndim(ev.arrays["w"]) == 4 and name != "w":
            window = tuple(int(s) for s in np.shape(ev.arrays["w"])[2:])
        else:
            window = None
        if window is not None:
            pad = int(params.get("pad", 0) or 0)
            ch = _coverage(a.shape[2], window[0], int(stride), pad)
            cw = _coverage(a.shape[3], window[1], int(stride), pad)
            many = np.outer(ch, cw) > 1
            if many.any() and not (wrong & ~many[None, None]).any():
                dirs = [f"stride {stride} < window {'height' if i == 0 else 'width'} {window[i]}"
                        for i in range(2) if window[i] > stride]
                return _finding("overwrite", f"{'grad[' + name + ']'} is wrong only where windows overlap",
                                grad=_var(f"grad[{name}]"), overlap=", ".join(dirs))
    # rows picked by an integer index that repeats: an embedding's dW[idx] = dout
    if a.ndim == 2:
        for key, idx in params.items():
            if isinstance(idx, np.ndarray) and idx.dtype.kind in "iu" and idx.size and idx.max() < a.shape[0]:
                counts = np.bincount(idx.reshape(-1), minlength=a.shape[0])
                rows = wrong.any(axis=1)
                if (counts > 1).any() and not (rows & (counts <= 1)).any():
                    rep = [int(i) for i in np.flatnonzero(counts > 1)[:3]]
                    return _finding("overwrite", f"grad[{name}] is wrong only at the rows {key} repeats ({rep})",
                                    variant="index", grad=_var(f"grad[{name}]"), grad_var=_var(f"grad[{name}]"),
                                    repeats=f"{key} repeats row {', '.join(map(str, rep))}")
    return None


# ---- through projections -------------------------------------------------------------------------

def recognise_projection(proj: np.ndarray, values: np.ndarray, allowed: np.ndarray, *, name: str = "grad",
                         shapes: dict | None = None) -> Finding | None:
    """The pattern of a gradient seen only through directional derivatives: `proj` (the reference's,
    <ref, u_k>) against `values` (finite differences'), each within `allowed` of the truth. Only a
    constant factor (a sign flip, a zero gradient) shows through projections, and only with two
    directions or more: one number against another is a multiple of it by construction."""
    p, v = np.asarray(proj, np.float64), np.asarray(values, np.float64)
    if p.size < 2 or not (np.isfinite(p).all() and np.isfinite(v).all()) or np.abs(v).max(initial=0.0) == 0:
        return None
    if np.all(np.abs(p) <= allowed):
        return _finding("zero_gradient", f"{name} is zero along every direction", grad=name)
    if np.all(np.abs(p + v) <= allowed):
        return _finding("sign_flip", f"{name} has the wrong sign", -1.0, grad=name)
    c = float(np.vdot(p, v) / np.vdot(v, v))
    # finite differences are exact to their tolerance only: a factor is round to that precision
    factor = _factor_name(c, min(max(float(np.max(allowed / np.abs(v))), 1e-6), 1e-4), shapes)
    if factor is not None and np.all(np.abs(p - c * v) <= allowed):
        return _factor_finding(name, c, factor)
    return None


# ---- what is not a comparison: a wrong shape, a non-finite value ---------------------------------------

def recognise_shape(name: str, got: tuple, want: tuple, params: dict) -> Finding | None:
    """A gradient of the wrong shape: an empty slice at pad 0, or a sum over a broadcast axis left out."""
    got, want = tuple(int(s) for s in got), tuple(int(s) for s in want)
    pad = params.get("pad")
    if len(got) == len(want) and pad is not None and int(pad) == 0 and any(
            g == 0 and w > 0 for g, w in zip(got, want)):
        return _finding("pad_zero_slice", f"grad[{name}] has shape {list(got)}: an empty slice at pad 0")
    if len(got) == 2 and got != want and got == want[::-1]:
        return _finding("transpose", f"grad[{name}] has the transposed shape {list(got)}", grad=f"grad[{name}]")
    # `db = dout`: the forward broadcast b (want) to dout's shape (got); its gradient sums over the new axes
    if len(got) > len(want) and got[len(got) - len(want):] == want:
        extra = list(range(len(got) - len(want)))
        axes = ", ".join(f"axis {i}" for i in extra)
        axis_arg = str(extra[0]) if len(extra) == 1 else str(tuple(extra))
        return _finding("missing_sum", f"grad[{name}] has the shape of dout, not of {name}: a sum over the "
                                       f"broadcast {axes} is missing", grad=_var(f"grad[{name}]"), got=got,
                        want=want, array=name, axes=axes, them="it" if len(extra) == 1 else "them",
                        axis_arg=axis_arg)
    return None


STABLE = (
    (re.compile(r"log_?softmax|cross_?entropy|softmax_loss|nll|temporal_softmax"),
     "compute log-softmax as z − max(z) − log Σ exp(z − max(z)) and the loss from it"),
    (re.compile(r"softmax"), "subtract each row's max before exp (the softmax is unchanged by it)"),
    (re.compile(r"sigmoid|lstm|logistic|bce"),
     "evaluate σ(x) with exp(−|x|): 1/(1 + e^(−x)) for x ≥ 0, e^x/(1 + e^x) for x < 0"),
)


def recognise_nonfinite(ev, mine, theirs, *, what: str, op: str = "") -> Finding | None:
    """NaN/Inf in the code under test where the oracle is finite: an overflow (exp past its range) or a
    log of an underflowed probability, with the stable formula for the op where it is known."""
    a, b = np.asarray(mine, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape or not (~np.isfinite(a) & np.isfinite(b)).any() or not np.isfinite(b).all():
        return None
    dtype = np.dtype(ev.dtype)
    limit = math.log(float(np.finfo(dtype).max))
    xmax = max((float(np.abs(x).max(initial=0.0)) for x in ev.arrays.values() if np.size(x)), default=0.0)
    where = (f"exp(x) is inf once x > {limit:.1f} (a sum of exps sooner), and a probability underflows to 0 (its "
             f"log −inf) once a score trails the max by more than "
             f"{-math.log(float(np.finfo(dtype).smallest_subnormal)):.0f}")
    stable = next((s for pat, s in STABLE if pat.search(op or "")),
                  "compute it in log space, or shift by the max before exp")
    return _finding("overflow", f"{what} is NaN/Inf in the code under test where the oracle is finite "
                                f"(inputs up to {xmax:.3g})", xmax=f"{xmax:.3g}", where=where, dtype=dtype.name,
                    stable=stable)
