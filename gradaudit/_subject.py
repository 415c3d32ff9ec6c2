"""A `gradaudit.function` subject's checks as Targets (gradaudit/function.py): one Target per check, the
oracles that judge it (the primal with the rule bypassed, the reference in the other framework, finite
differences of the subject's forward), and the contract autograd's engine would enforce out of sight.
Its cases and records: gradaudit/_subject_run.py.

What the records add for a subject (reports/records.py, docs/result_record.md): `target_spread` (the
`vjp` check: the subject run twice on the same case, the largest difference of its gradients:
nondeterministic atomics, reported apart from the error), `tolerance_mode` (reference-relative in
float16 and bfloat16), and the pattern of a rule that breaks autograd's contract where the engine
would hide it (`missing_sum`, `wrong_dtype`, `batching`) or keeps tensors a double backward
cannot differentiate (`ctx_intermediate`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from oracles import numeric
from oracles.base import OracleUnavailable, as_tuple
from oracles.subject_oracle import LOW_PRECISION, RuleError, finite_differences, same_math_errors, two_dtypes
from properties import patterns
from properties.compare import compare
from properties.spec import Case
from properties.strategies import upstream
from properties.target import Target
from properties.tolerances import policy
from properties.verdict import CodeUnderTestError

from .arguments import DEFAULT_SIZES
from .function import SECOND_ORDER

__all__ = ["ContractViolation", "SubjectState", "SubjectTarget", "adapter", "probe_case", "subject_target"]

LAYOUTS = {"vjp_strided": "strided", "vjp_expanded": "expanded"}
BATCH_SCALES = (1.0, 2.0, -1.0)  # exact in floating point: a batch's slices must be exact multiples


class ContractViolation(CodeUnderTestError):
    """The rule returned what autograd's engine would reduce, cast or batch out of sight; `pattern`
    names which."""

    def __init__(self, message: str, pattern: str | None = None):
        super().__init__(message)
        self.pattern = pattern


@dataclass
class SubjectState:
    """What one check learns while it runs, for its records."""

    spread: float | None = None  # largest run-to-run difference since the last group's records
    measured: bool = False  # spread measured in this group (on the CPU once per group)
    violations: dict = field(default_factory=dict)  # error message -> (pattern, its sentence)
    kept: list = field(default_factory=list)  # tensors the Function keeps that are neither inputs nor outputs
    computes_float64: bool | None = None

    def take_spread(self) -> float | None:
        s, self.spread, self.measured = self.spread, None, False
        return s


@dataclass(frozen=True)
class SubjectTarget(Target):
    """A check of a subject: its oracles are the subject's own (the primal with the rule bypassed, the
    reference in the other framework, finite differences of the subject's forward)."""

    check: str = "vjp"
    sides: dict = field(default_factory=dict, compare=False, hash=False)  # oracle -> (forward, vjp)
    unavailable: dict = field(default_factory=dict, compare=False, hash=False)  # oracle -> why not
    state: SubjectState = field(default_factory=SubjectState, compare=False, hash=False)
    # under `gradaudit audit` the framework oracles run in the audit child, beside the audited code:
    # forgeable, so a disagreement blamed on one is a fail (properties/stability.py)
    oracles_beside_user_code: bool = False

    def oracle_forward(self, oracle: str):
        return self.sides[oracle][0] if oracle in self.sides else None

    def oracle_vjp(self, oracle: str):
        if oracle in self.sides:
            return self.sides[oracle][1]
        why = self.unavailable.get(oracle, f"{oracle}: not an oracle of {self.op}")

        def unavailable(*args, **kwargs):
            raise OracleUnavailable(why)

        return unavailable


@functools.cache
def adapter(subject):
    """The framework side of a subject (oracles/torch_subject.py, oracles/jax_subject.py), one per subject;
    under `gradaudit audit`, calls into the audit child (gradaudit/_subject_remote.py)."""
    if getattr(subject, "remote_adapter", None) is not None:
        return subject.remote_adapter
    if subject.framework == "torch":
        from oracles.torch_subject import TorchSubject

        return TorchSubject(subject.fn, name=subject.name, assemble=subject.assemble)
    from oracles.jax_subject import JaxSubject

    return JaxSubject(subject.fn, name=subject.name, assemble=subject.assemble, kind=subject.kind)


def framework_oracle(name: str):
    """(vjp, xp_forward, second_order) of a framework's oracle for subjects."""
    if name == "torch":
        from oracles import torch_subject as m

        return m.vjp, m.xp_forward, m.second_order
    from oracles import jax_oracle
    from oracles import jax_subject as m

    return jax_oracle.vjp, m.xp_forward, m.second_order


# ---- a case to look at the subject with, before any search ---------------------------------------

def probe_case(subject) -> Case:
    """A fixed, ordinary case (distinct sizes, standard normal values): for what has to be known about
    a subject before its cells run (whether its primal can be differentiated)."""
    rng = np.random.default_rng(0)
    sizes, taken = {}, set()
    for sym in subject.symbols():
        choices = tuple(subject.sizes.get(sym, DEFAULT_SIZES))
        sizes[sym] = next((c for c in choices if c not in taken and c > 1), choices[0])
        taken.add(sizes[sym])

    def shape(s):
        return tuple(sizes[d] if isinstance(d, str) else int(d) for d in s.shape)

    def draw(s):
        if s.kind in ("choice", "fixed"):
            return s.values[0]
        if s.kind in ("array", "const"):
            if s.low is not None:
                return rng.uniform(s.low, s.high, size=shape(s))
            return rng.standard_normal(shape(s)) * s.scale
        if s.kind == "mask":
            return (rng.random(shape(s)) < s.p).astype(np.float64)
        classes = sizes[s.classes] if isinstance(s.classes, str) else int(s.classes)
        idx = rng.integers(0, classes, size=shape(s))
        return idx if s.kind == "labels" else np.eye(classes)[idx]

    return Case({n: draw(s) for n, s in subject.arrays.items()}, {n: draw(s) for n, s in subject.params.items()})


def _primal_unavailable(subject, ad) -> str | None:
    """Why autograd of the subject's primal cannot judge it (its outputs need no grad), or None."""
    case = probe_case(subject)
    own_vjp = framework_oracle(subject.framework)[0]
    douts = upstream([np.shape(o) for o in as_tuple(ad.numpy_forward()(*case.arrays.values(), **case.params))], 0)
    try:
        own_vjp(ad.primal_forward(), case.arrays, case.params, douts, dtype="float64", device="cpu")
    except OracleUnavailable as e:
        return f"{e}; give {subject.name} a reference= forward for the other framework to judge it"
    except Exception:  # the primal raises on this case: let the search find and report it
        return None
    return None


# ---- the target of a check --------------------------------------------------------------------

def _broadcast_axes(small: tuple, big: tuple) -> tuple | None:
    """The axes of `big` along which an array of shape `small` was broadcast to it, or None."""
    try:
        if np.broadcast_shapes(small, big) != tuple(big):
            return None
    except ValueError:
        return None
    lead = len(big) - len(small)
    return tuple(i for i in range(len(big)) if i < lead or (small[i - lead] == 1 and big[i] != 1))


def _contract(name: str, framework: str, names, arrays, grads, state: SubjectState, raw: bool) -> list:
    """The rule's gradients as autograd's contract wants them (each its input's shape and dtype); a
    violation is an error naming it. None is a zero gradient, as for autograd."""
    out = []
    for n, a, g in zip(names, arrays, grads):
        a = np.asarray(a)
        if g is None:
            out.append(np.zeros(a.shape, a.dtype))
            continue
        pattern, sentence = None, None
        if not isinstance(g, np.ndarray):
            msg = f"{name}: grad[{n}] is a {type(g).__name__}, expected an array of shape {list(a.shape)}"
        elif g.shape != a.shape:
            axes = _broadcast_axes(a.shape, g.shape)
            msg = f"{name}: grad[{n}] has shape {list(g.shape)}, expected {list(a.shape)}"
            if axes is not None:
                pattern = "missing_sum"
                kept_dims = len(a.shape) == len(g.shape)  # broadcast along size-1 axes: keepdims
                axis_arg = str(axes[0]) if len(axes) == 1 else str(tuple(axes))
                sentence = patterns.explain("missing_sum", grad=f"grad[{n}]", got=list(g.shape), want=list(a.shape),
                                            array=n, axes=", ".join(f"axis {i}" for i in axes),
                                            them="it" if len(axes) == 1 else "them",
                                            axis_arg=axis_arg + (", keepdims=True" if kept_dims else ""))
                msg += (f": the sum over axes {list(axes)}, along which {n} is broadcast, is missing"
                        + (" (autograd's engine sums it silently, so gradcheck passes)" if framework == "torch" and raw
                           else ""))
        elif g.dtype != a.dtype:
            pattern = "wrong_dtype"
            sentence = patterns.explain("wrong_dtype", grad=f"grad[{n}]", got=g.dtype, array=n, want=a.dtype)
            hides = (f" (autograd's engine casts it to {a.dtype} silently, so gradcheck passes)" if framework == "torch"
                     else f" (jax.grad returns it as {g.dtype}, so check_grads passes)")
            msg = f"{name}: grad[{n}] has dtype {g.dtype}, expected {a.dtype} (its input's){hides}"
        else:
            out.append(g)
            continue
        state.violations[msg] = (pattern, sentence)
        raise ContractViolation(msg, pattern)
    return out


def _batched(ad, run, douts, name, names, arrays, device, dtype, state) -> list:
    """The VJPs for the upstream gradients dout, 2·dout and −dout computed in one batch: each slice must
    be that multiple of the first (exactly, barring a different summation order), and the first is
    judged by the oracles."""
    batch = [np.stack([np.asarray(d) * np.asarray(s, dtype=np.asarray(d).dtype) for s in BATCH_SCALES])
             for d in douts]
    got = ad.rule_batched(run, batch, device)
    out = []
    dout_max = max((float(np.abs(np.asarray(d, dtype=np.float64)).max(initial=0.0)) for d in douts), default=1.0)
    for n, a, g in zip(names, arrays, got):
        a = np.asarray(a)
        if np.shape(g) != (len(BATCH_SCALES), *a.shape):
            msg = f"{name}: batched grad[{n}] has shape {list(np.shape(g))}, expected {[len(BATCH_SCALES), *a.shape]}"
            state.violations[msg] = ("batching", patterns.explain("batching"))
            raise ContractViolation(msg, "batching")
        pol = policy(dtype, size=max(a.size, 1), oracle="torch", dout_max=dout_max,
                     input_max=float(np.abs(a.astype(np.float64)).max(initial=1.0)))
        first = np.asarray(g[0], dtype=np.float64)
        for k, s in enumerate(BATCH_SCALES[1:], 1):
            c = compare(g[k], s * first, pol, ulp_dtype=dtype)
            if not c.ok:
                msg = (f"{name}: grad[{n}] for the upstream gradient {s:g}·dout, computed in one batch with dout, "
                       f"is not {s:g} × the one for dout: greatest difference {c.max_abs:.3g} at index "
                       f"{c.worst_index}")
                state.violations[msg] = ("batching", patterns.explain("batching"))
                raise ContractViolation(msg, "batching")
        out.append(np.asarray(g[0]))
    return out


def _spread(ad, arrays, params, douts, grads, device, layout, state: SubjectState) -> None:
    """Run the subject again on the same case (fresh copies): the largest difference of its gradients.
    Every example on an accelerator (atomics), once per group on the CPU: on the first example whose
    gradients are not all zero (a search starts from the simplest case, often all zeros, where any
    summation order gives the same zero)."""
    if device == "cpu" and state.measured:
        return
    state.measured = any(np.any(np.asarray(g) != 0) for g in grads)
    run = ad.run([np.array(a) for a in arrays], {k: np.array(v) if isinstance(v, np.ndarray) else v
                                                   for k, v in params.items()}, device, layout)
    again, _ = ad.rule(run, [np.array(d) for d in douts], device)
    diff = max((float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(h, np.float64)), initial=0.0))
                for g, h in zip(grads, again) if h is not None and np.shape(g) == np.shape(h)), default=0.0)
    state.spread = max(state.spread or 0.0, diff)


def _first_order(subject, ad, check: str, name: str, device: str, state: SubjectState):
    layout = LAYOUTS.get(check)
    names = list(subject.arrays)

    def forward(*arrays, **params):
        try:
            run = ad.run(arrays, params, device, layout)
        except RuleError as e:
            raise CodeUnderTestError(f"{name}: {e}") from None
        return ad.outputs(run), (arrays, params, run)

    def backward(*args):
        *douts, (arrays, params, run) = args
        dtype = np.asarray(arrays[0]).dtype.name
        try:
            if check == "jvp":
                grads, raw = ad.jvp_transposed(arrays, params, douts, device), False
            elif check == "vjp_batched":
                grads, raw = _batched(ad, run, douts, name, names, arrays, device, dtype, state), False
            else:
                grads, raw = ad.rule(run, douts, device)
        except RuleError as e:
            raise CodeUnderTestError(f"{name}: {e}") from None
        grads = _contract(name, subject.framework, names, arrays, grads, state, raw)
        if check == "vjp":
            _spread(ad, arrays, params, douts, grads, device, layout, state)
        return tuple(grads)

    return forward, backward


def _second_order(subject, ad, check: str, name: str, device: str, state: SubjectState):
    n = len(subject.arrays)
    names = list(subject.arrays)

    def forward(*arrays, **params):
        xs, ds = arrays[:n], arrays[n:]
        try:
            grads, handle = ad.first(xs, ds, params, device)
        except RuleError as e:
            raise CodeUnderTestError(f"{name}: {e}") from None
        if subject.framework == "torch" and ad.last_run is not None:
            state.kept = ad.ctx_intermediates(ad.last_run)
        grads = _contract(name, subject.framework, names, xs, grads, state, raw=subject.framework == "jax")
        return tuple(grads) if len(grads) > 1 else grads[0], (xs, ds, params, handle)

    def backward(*args):
        *ddx, (xs, ds, params, handle) = args
        try:
            if check == "vjp_of_vjp":
                return tuple(ad.second(handle, ddx, device))
            return tuple(ad.second_jvp_transposed(xs, ds, params, ddx, device))
        except RuleError as e:
            raise CodeUnderTestError(f"{name}: {e}") from None

    return forward, backward


def numeric_vjp(subject, ad, state: SubjectState, second: bool, same_math=None):
    """Finite differences of the subject's own forward (its first-order rule, for the second order):
    oracles.numeric's in float64 where the subject computes in float64, else in the cell's dtype with
    its own step (oracles.subject_oracle.finite_differences); in a low precision, judged with the
    error the own side's computation in that dtype showed on the same case."""
    def vjp(forward, arrays, params, douts, *, dtype, device, directions=numeric.DIRECTIONS, out0=None):
        if state.computes_float64 is None:  # a kernel that exists in float16/bfloat16 only raises or rounds
            try:
                outs = as_tuple(forward(*[np.asarray(a, dtype=np.float64) for a in arrays.values()], **params))
                state.computes_float64 = all(np.asarray(o).dtype == np.float64 for o in outs)
            except Exception:
                state.computes_float64 = False
        if state.computes_float64:
            res = numeric.vjp(forward, arrays, params, douts, dtype=dtype, device=device, directions=directions,
                              out0=out0)
        else:
            res = finite_differences(forward, arrays, params, douts, compute_dtype=dtype, directions=directions)
        if dtype in LOW_PRECISION and same_math is not None:
            res.info["reference_error"] = {"forward": {}, "grads": same_math(arrays, params, douts, dtype, device)["grads"]}
        return res

    return vjp


@functools.cache
def oracle_forwards(subject, second: bool) -> dict:
    """oracle -> the forward it differentiates for a subject's first- or second-order checks, or the
    reason it cannot. One object per (subject, order): the JAX oracle compiles once per forward."""
    ad = adapter(subject)
    n = len(subject.arrays)
    own = subject.framework
    other = "jax" if own == "torch" else "torch"
    out = {}
    why = _primal_unavailable(subject, ad)
    if why is None:
        primal = ad.primal_forward()
        out[own] = framework_oracle(own)[2](primal, n) if second else primal
    else:
        out[own] = OracleUnavailable(why)
    if subject.reference is None:
        out[other] = OracleUnavailable(f"{other}: {subject.name} has no reference forward (pass reference=, the "
                                       f"forward written against the array-API namespace xp, for {other} to judge it)")
    else:
        try:
            _, xp_forward, second_order = framework_oracle(other)
            fwd = xp_forward(subject.reference, subject.assemble)
        except OracleUnavailable as e:
            out[other] = e
        else:
            out[other] = second_order(fwd, n) if second else fwd
    out["numeric"] = ad.numpy_first_grads(n) if second else ad.numpy_forward()
    return out


def oracle_sides(subject, ad, check: str, state: SubjectState) -> tuple[dict, dict]:
    if getattr(ad, "remote", False):  # the frameworks' sides in the audit child, finite differences here
        return ad.sides(subject, check, state)
    second = check in SECOND_ORDER
    forwards = oracle_forwards(subject, second)
    sides, unavailable = {}, {}
    # In a low precision every side allows the error the subject's own primal shows in that dtype: the
    # same math, in the same framework (JAX's CPU backend computes float16 more accurately than torch's,
    # so the reference's own error would say little about a torch Function's).
    own = forwards.get(subject.framework)
    same_math = None if isinstance(own, OracleUnavailable) else same_math_errors(framework_oracle(subject.framework)[0], own)
    for oracle, fwd in forwards.items():
        if isinstance(fwd, OracleUnavailable):
            unavailable[oracle] = str(fwd)
        elif oracle == "numeric":
            sides[oracle] = (fwd, numeric_vjp(subject, ad, state, second, same_math))
        else:
            sides[oracle] = (fwd, two_dtypes(framework_oracle(oracle)[0], same_math))
    return sides, unavailable


def subject_target(subject, check: str, device: str = "cpu", state: SubjectState | None = None) -> SubjectTarget:
    """The Target of one check of a subject on `device`."""
    state = state if state is not None else SubjectState()
    ad = adapter(subject)
    name = subject.target_name(check) + ("" if device == "cpu" else f"@{device}")
    build = _second_order if check in SECOND_ORDER else _first_order
    forward, backward = build(subject, ad, check, name, device, state)
    sides, unavailable = oracle_sides(subject, ad, check, state)
    return SubjectTarget(name=name, op=subject.name, forward=forward, backward=backward, check=check, sides=sides,
                         unavailable=unavailable, state=state,
                         oracles_beside_user_code=getattr(ad, "remote", False))
