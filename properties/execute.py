"""The code under test, run on one case: its forward and backward on private copies, validated, under
a seeded global random stream. What it does with correct values (writes into its inputs, `dout` or
its cache; another dtype; a different result on a second call under another stream) becomes a
`Hazard`; a backward that raises is kept apart from the forward, which is judged first; a forward
output of the wrong shape is the target's own error. The judging is properties/evaluate.py's.
"""
from __future__ import annotations

import contextlib
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oracles.base import as_tuple

from . import patterns
from .spec import Case, OpSpec
from .strategies import upstream
from .target import Target
from .verdict import Hazard, Side, Verdict, collect_hazards, raised

__all__ = ["Evaluation", "RunPlan", "arrays_in", "failure_class", "run_target", "take_plan"]


@dataclass
class Evaluation:
    case: Case
    dtype: str
    arrays: dict[str, np.ndarray]  # the cast inputs every side received
    douts: tuple[np.ndarray, ...] = ()
    out: Any = None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    mutated: list[str] = field(default_factory=list)
    error: str | None = None  # the target's forward raised or returned something malformed: nothing to compare
    backward_error: str | None = None  # the backward did: the forwards are still compared, first
    finding: patterns.Finding | None = None  # the error's pattern (a gradient of a telling shape)
    # the target's forward output has another shape than the forward it is judged against (its own
    # error, named as such): ((the target's outputs), (the expected outputs))
    shape_mismatch: tuple | None = None
    hazards: list[Hazard] = field(default_factory=list)  # what the target did with correct values
    stream: int | None = None  # the seed of NumPy's (and Python's) global generator the target ran under
    sides: dict[Side, Verdict] = field(default_factory=dict)
    # per-case figures the tolerance policy needs, computed once instead of once per side and phase
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(v.status in ("fail", "error") for v in self.sides.values())

    @property
    def worst_ratio(self) -> float:
        r = [v.cmp.ratio for v in self.sides.values() if v.cmp is not None and np.isfinite(v.cmp.ratio)]
        return max(r, default=0.0)

    def failures(self) -> frozenset[tuple[Side, str]]:
        """(side, what failed) for each failing side: `forward`, `backward` or `error`. A search shrinks
        towards a smaller case of the same failure, never slips to another (properties/runner.py)."""
        return frozenset((s, failure_class(v)) for s, v in self.sides.items() if v.status in ("fail", "error"))


def failure_class(v: Verdict) -> str:
    if v.status == "error":
        return "error"
    return "forward" if v.phase == "forward" else "backward"


@contextlib.contextmanager
def _global_stream(seed: int | None, here: bool = True):
    """NumPy's and Python's global generators seeded with `seed` (restored afterwards): user code that
    draws from np.random sees a stream that the search varies and a replay reproduces. Hypothesis
    seeds both with the same value for every example, so without this a bug that shows on one draw
    in three would pass every example. `here`: the user code runs in this process; else only
    `current_stream` says the stream (an audit child seeds its own generators from it: saving and
    seeding this process's cost the judge ~1 s per notes audit, for nothing that draws here)."""
    if seed is None:
        yield
        return
    if here:
        np_state, py_state = np.random.get_state(), random.getstate()
        np.random.seed(seed % 2**32)
        random.seed(seed)
    _RUN.stream = (int(seed), _RUN.epoch + 1)
    _RUN.epoch += 1
    try:
        yield
    finally:
        _RUN.stream = None
        if here:
            np.random.set_state(np_state)
            random.setstate(py_state)


class _RunState(threading.local):
    """This thread's run under way: an audit's lanes search in threads of their own, each with its own
    child (gradaudit/_lanes.py), whose generators follow that thread's streams alone."""

    stream: tuple[int, int] | None = None  # (seed, epoch) of the global random stream now
    epoch = 0  # streams begun in this thread: a new stream differs from the last even for the same seed
    plan: "RunPlan | None" = None  # what the run_target under way asks next (take_plan)


_RUN = _RunState()
SECOND_STREAM = 0x5DEECE66D  # the second call's stream: the first's seed xor this


def current_stream() -> tuple[int, int] | None:
    """(seed, epoch) of the global random stream the target runs under now, else None: an audit child
    seeds its own generators from it, so that user code drawing there sees the stream a replay sees."""
    return _RUN.stream


@dataclass(frozen=True)
class RunPlan:
    """What run_target is about to ask of the target, in order, for code that runs in another process:
    the audit child computes it ahead, in one request (gradaudit/_ahead.py). A prediction only: the
    other side answers each call as it predicted it, and the judge uses an answer only for the very
    request it would have sent; anything else is asked for afresh."""

    dtype: str
    names: tuple  # the arrays, in the forward's order
    dout_seed: int
    douts: tuple | None  # the upstream gradients given, else upstream(the output shapes, dout_seed)
    backward: bool  # the backward follows the forward (not forward_only)
    again: tuple | None  # (seed, epoch) of the second call's stream (current_stream), if there is one
    sides: tuple  # the oracles' (oracle, device) evaluate asks next, in that order


def take_plan() -> RunPlan | None:
    """The plan of the run_target under way, once: the first forward call takes it."""
    plan, _RUN.plan = _RUN.plan, None
    return plan


def arrays_in(obj, depth: int = 0, out=None) -> list[np.ndarray]:
    """The NumPy arrays a cache holds (tuples, lists, dicts and plain objects, a few levels deep)."""
    out = [] if out is None else out
    if len(out) > 256 or depth > 5:
        return out
    if isinstance(obj, np.ndarray):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            arrays_in(v, depth + 1, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            arrays_in(v, depth + 1, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        for v in vars(obj).values():
            arrays_in(v, depth + 1, out)
    return out


def _same(a, b) -> bool:
    try:
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    except TypeError:  # not numeric
        return np.array_equal(np.asarray(a), np.asarray(b))


def _names(names) -> str:
    return ", ".join(names)


@dataclass
class _Run:
    """One call of the target's forward and backward."""

    out: Any = None
    cache: Any = None
    grads: tuple | None = None
    forward_error: str | None = None
    backward_error: str | None = None


def _trusted_forward(spec: OpSpec | None, target: Target):
    """The forward whose output shape the target's must have, when that is not the target's own: the
    judge's forward in an audit, else the catalogue op's reference. None: the oracles differentiate
    the target's own forward (a derivation), or the target is the reference."""
    if target.xp_forward is not None:
        return None
    if target.judge_forward is not None:
        return target.judge_forward
    if spec is None:
        return None
    try:
        ref = spec.forward
    except AttributeError:  # a derivation's spec: no reference pair
        return None
    return None if ref is target.forward else ref


def _is_reference(spec: OpSpec | None, target: Target) -> bool:
    try:
        return spec is not None and target.forward is spec.forward and target.backward is spec.backward
    except AttributeError:
        return False


def run_target(target: Target, case: Case, dtype: str, douts=None, dout_seed: int = 0, *,
               spec: OpSpec | None = None, stream: int | None = None, forward_only: bool = False,
               sides: tuple = ()) -> Evaluation:
    """Forward and backward of the code under test on private copies, validated. What it does with
    correct values (writes into its inputs, another dtype, a different result on a second call under
    another global random stream) becomes `hazards`; a backward that raises is kept apart from the
    forward, which is judged first. `sides`: the oracles evaluate asks next, in order (a RunPlan's)."""
    second = stream is not None and not _is_reference(spec, target)
    # the second call's stream is the next _global_stream after this run's own: epoch + 2
    _RUN.plan = RunPlan(dtype, tuple(case.arrays), dout_seed, None if douts is None else tuple(douts),
                        not forward_only, (stream ^ SECOND_STREAM, _RUN.epoch + 2) if second else None,
                        tuple(sides))
    try:
        return _run_target(target, case, dtype, douts, dout_seed, spec, stream, forward_only, second)
    finally:
        _RUN.plan = None


def _run_target(target: Target, case: Case, dtype: str, douts, dout_seed: int, spec: OpSpec | None,
                stream: int | None, forward_only: bool, second: bool) -> Evaluation:
    arrays = case.cast(dtype)
    # float array params (an mse target, a dropout mask) in the cell's dtype too, so that every side,
    # the float64 finite differences included, evaluates the same point
    case = Case(case.arrays, {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                              for k, v in case.params.items()})
    ev = Evaluation(case=case, dtype=dtype, arrays=arrays, stream=stream)
    names = list(arrays)
    fwd_name = target.forward_name or f"the forward of {target.name}"
    mine = {n: a.copy() for n, a in arrays.items()}
    my_params = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in case.params.items()}

    def call_forward(ins, params, run: _Run) -> None:
        try:
            out, run.cache = target.forward(*ins.values(), **params)
        except Exception as e:
            run.forward_error = raised(f"{target.name}: forward", e, named_alone=True)
            return
        if any(o is None for o in as_tuple(out)):
            run.forward_error = f"{fwd_name} returned None"
            return
        run.out = out

    def call_backward(ds, run: _Run) -> None:
        try:
            grads = target.backward(*ds, run.cache)
        except Exception as e:
            run.backward_error = raised(f"{target.name}: backward", e, named_alone=True)
            return
        if len(names) == 1 and not isinstance(grads, (tuple, list)):
            grads = (grads,)
        run.grads = tuple(grads) if isinstance(grads, (tuple, list)) else grads

    with collect_hazards() as reported:
        run = _Run()
        with _global_stream(stream, target.user_code_here):
            call_forward(mine, my_params, run)
            if run.forward_error is not None:
                ev.error = run.forward_error
                return ev
            ev.out = run.out
            outs = as_tuple(run.out)
            trusted = _trusted_forward(spec, target)
            expected = None
            if trusted is not None:
                try:
                    expected = as_tuple(trusted(*(a.copy() for a in arrays.values()), **dict(case.params))[0])
                except Exception:  # the judge's own forward fails here: the oracles will say so
                    expected = None
            if expected is not None and (len(expected) != len(outs) or any(
                    np.shape(o) != np.shape(e) for o, e in zip(outs, expected))):
                ev.shape_mismatch = (outs, expected)
            shapes = [np.shape(o) for o in (expected if expected is not None else outs)]
            if douts is None:
                douts = upstream(shapes, dout_seed)
            ev.douts = tuple(np.asarray(d, dtype=dtype) for d in douts)
            _forward_hazards(ev, target, fwd_name, outs, arrays, mine, dtype)
            if ev.shape_mismatch is not None or forward_only:  # no dout of the right shape for its backward
                ev.hazards += reported
                return ev
            my_douts = [d.copy() for d in ev.douts]
            cache_arrays = [a for a in arrays_in(run.cache)
                            if not any(np.may_share_memory(a, m) for m in (*mine.values(), *as_tuple(run.out))
                                       if isinstance(m, np.ndarray))]
            cache_before = [a.copy() for a in cache_arrays]
            call_backward(my_douts, run)
        ev.backward_error = run.backward_error or _malformed(target, run.grads, names, arrays)
        if ev.backward_error is not None and run.backward_error is None:
            ev.finding = _shape_finding(run.grads, names, arrays, case)
        if ev.backward_error is None:
            ev.grads = _as_dtype(ev, target, run.grads, names, dtype)
        written = [n for n in names if not _same(mine[n], arrays[n])]
        written += [_dout_name(i, len(ev.douts)) for i, (d, m) in enumerate(zip(ev.douts, my_douts)) if not _same(d, m)]
        written += [k for k, v in case.params.items()
                    if isinstance(v, np.ndarray) and not _same(v, my_params[k])]
        backward_wrote = [n for n in written if n not in _forward_wrote(ev)]
        ev.mutated = _forward_wrote(ev) + backward_wrote
        if any(not _same(b, a) for b, a in zip(cache_before, cache_arrays)):
            backward_wrote.append("its cache")
        if backward_wrote:
            ev.hazards.append(Hazard("mutation", f"{target.name} writes into {_names(backward_wrote)} in place: the "
                                                 f"values are right, but a caller that uses "
                                                 f"{'them' if len(backward_wrote) > 1 else 'it'} afterwards sees "
                                                 f"{'them' if len(backward_wrote) > 1 else 'it'} changed"))
        if second:
            _second_call(ev, target, case, dtype, stream, run, call_forward, call_backward, fwd_name)
    ev.hazards += reported
    return ev


def _dout_name(i: int, n: int) -> str:
    if n == 1:
        return "dout (its upstream gradient)"
    return f"dout{i} (its upstream gradient of output {i})"


def _forward_wrote(ev: Evaluation) -> list[str]:
    return ev.memo.get("forward_wrote", [])


def _forward_hazards(ev: Evaluation, target: Target, fwd_name: str, outs, arrays, mine, dtype: str) -> None:
    wrong = [f"out{i}" if len(outs) > 1 else "its output" for i, o in enumerate(outs)
             if isinstance(o, np.ndarray) and o.ndim > 0 and o.dtype.kind == "f" and o.dtype != np.dtype(dtype)]
    if wrong:
        got = next(o.dtype for o in outs if isinstance(o, np.ndarray) and o.ndim > 0 and o.dtype.kind == "f"
                   and o.dtype != np.dtype(dtype))
        ev.hazards.append(Hazard("dtype", f"{fwd_name} returns {_names(wrong)} as {got} for {dtype} inputs: values "
                                          f"judged as they are, at {dtype}'s tolerance (allocate with "
                                          f"np.zeros_like(x) or dtype=x.dtype to keep the input's dtype)"))
    wrote = [n for n in arrays if not _same(mine[n], arrays[n])]
    if wrote:
        ev.memo["forward_wrote"] = wrote
        ev.mutated = list(wrote)
        ev.hazards.append(Hazard("mutation", f"{fwd_name} writes into its input{'s' if len(wrote) > 1 else ''} "
                                             f"{_names(wrote)} in place: the values are right, but the caller's "
                                             f"arrays are changed"))


def _malformed(target: Target, grads, names, arrays) -> str | None:
    """Why the backward's return value cannot be judged, or None."""
    want = ", ".join(f"d{n}" for n in names)
    if not isinstance(grads, tuple) or len(grads) != len(names):
        got = f"{len(grads)} values" if isinstance(grads, tuple) else type(grads).__name__
        return f"{target.name}: returned {got}, expected {len(names)} gradients ({want})"
    for n, g in zip(names, grads):
        if g is None or not hasattr(g, "shape"):
            return f"{target.name}: grad[{n}] is {type(g).__name__}, expected an array of shape {list(arrays[n].shape)}"
        if tuple(g.shape) != arrays[n].shape:
            return f"{target.name}: grad[{n}] has shape {list(g.shape)}, expected {list(arrays[n].shape)}"
        got = np.asarray(g).dtype
        # a wider float is a hazard, judged after the cast (_as_dtype); a narrower one has lost the
        # digits the cell's tolerance asks for
        if got.kind != "f" or got.itemsize < arrays[n].dtype.itemsize:
            return f"{target.name}: grad[{n}] has dtype {got}, expected {arrays[n].dtype}"
    return None


def _shape_finding(grads, names, arrays, case: Case) -> patterns.Finding | None:
    """The pattern of the first gradient of the wrong shape (a transpose, a lost axis), if any."""
    if not isinstance(grads, tuple):
        return None
    for n, g in zip(names, grads):
        if hasattr(g, "shape") and tuple(g.shape) != arrays[n].shape:
            return patterns.recognise_shape(n, g.shape, arrays[n].shape, case.params)
    return None


def _as_dtype(ev: Evaluation, target: Target, grads, names, dtype: str) -> dict[str, np.ndarray]:
    """The gradients at the cell's dtype; another float dtype is a hazard, judged after the cast."""
    other = [(n, np.asarray(g).dtype) for n, g in zip(names, grads) if np.asarray(g).dtype != np.dtype(dtype)]
    if other:
        ev.hazards.append(Hazard("dtype", f"{target.name} returns {_names(f'grad[{n}]' for n, _ in other)} as "
                                          f"{other[0][1]} for {dtype} inputs: values judged after casting to {dtype} "
                                          f"(allocate with np.zeros_like(x) or dtype=x.dtype)"))
    return {n: np.asarray(g, dtype=dtype) for n, g in zip(names, grads)}


def _second_call(ev: Evaluation, target: Target, case: Case, dtype: str, stream: int, first: _Run,
                 call_forward, call_backward, fwd_name: str) -> None:
    """The same input once more under another global random stream: a different result is
    nondeterminism (user code drawing from np.random outside a given seed)."""
    run = _Run()
    with collect_hazards(), _global_stream(stream ^ SECOND_STREAM, target.user_code_here):
        call_forward({n: a.copy() for n, a in ev.arrays.items()},
                     {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in case.params.items()}, run)
        if run.forward_error is None and ev.shape_mismatch is None:
            call_backward([d.copy() for d in ev.douts], run)
    what = None
    if (run.forward_error is None) != (first.forward_error is None) or not all(
            _same(a, b) for a, b in zip(as_tuple(run.out), as_tuple(first.out))):
        what = f"{fwd_name} returns another output"
    elif (run.backward_error is None) != (first.backward_error is None):
        what = f"{target.name} {'raises' if run.backward_error else 'returns'} on one call and not the other"
    elif first.grads is not None and run.grads is not None and isinstance(first.grads, tuple) \
            and isinstance(run.grads, tuple) and not all(_same(a, b) for a, b in zip(first.grads, run.grads)):
        what = f"{target.name} returns other gradients"
    if what:
        ev.hazards.append(Hazard("nondeterminism", f"{what} for the same input on a second call: it draws from "
                                                   f"NumPy's global generator (np.random) outside a given seed; "
                                                   f"each outcome is judged, and a wrong one replays with its stream"))


