"""`@gradaudit.derivation`: a derivation from someone's notes, checked against the frameworks.

The forward is written once, against the array-API namespace `xp`; the backward in NumPy, from
the notes. Shapes are symbols, so Hypothesis draws consistent ones::

    import gradaudit

    @gradaudit.derivation(source="seed 003 § 线性层", formula="dX = dY Wᵀ, dW = Xᵀ dY")
    def linear(xp, X: ("N", "D"), W: ("D", "C")):
        return X @ W

    @linear.backward
    def linear_backward(dY, X, W):
        return dY @ W.T, X.T @ dY

gradaudit runs `linear` under torch and `jax.numpy` (through array-api-compat) so that each framework
differentiates *this* forward, under NumPy for the numeric oracle, and compares their vector-Jacobian
products with `linear_backward`.

The contract, as for the catalogue (docs/op_contract.md):

- positional arguments after `xp` are the differentiable arrays, annotated with a shape tuple
  (`("N", "D")`: symbols are drawn per example, ints are literal sizes) or with `gradaudit.array(...)`;
- keyword-only arguments are parameters, never differentiated: `gradaudit.labels(...)`,
  `gradaudit.onehot(...)`, `gradaudit.const(...)` (a float array), `gradaudit.mask(...)`,
  `gradaudit.choice(...)` (a scalar), or a plain default value;
- the backward takes the upstream gradient(s) (one per output; a 0-d array for a loss), then the
  arrays in order, then the parameters by keyword, and `out=` (the forward's output) if it asks
  for it; it returns one gradient per differentiable array (a single array when there is one, a
  tuple, or a dict by name). Gradients are cast to the input's dtype: a derivation is judged on its
  formula, not on its dtype discipline.

This module imports NumPy only: `import gradaudit` stays free of torch and jax.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from .arguments import DEFAULT_SIZES, ArgSpec, array, as_spec, choice, const, labels, mask, onehot

__all__ = ["DEFAULT_SIZES", "ArgSpec", "Derivation", "array", "choice", "const", "derivation", "labels", "mask",
           "onehot"]

# ---- the derivation ---------------------------------------------------------------------------

@dataclass(eq=False)
class Derivation:
    """A forward (array API) and its hand-derived backward (NumPy), with what to draw."""

    fn: Callable
    name: str
    source: str = ""
    formula: str = ""
    regimes: tuple = ("typical",)
    sizes: dict = field(default_factory=dict)
    like: str | None = None
    rtol: float | dict | None = None  # the smallest rtol to judge with, for every dtype or per dtype
    dtypes: tuple | None = None  # the dtypes to check it in (None: the run's)
    kinks: Callable | None = None
    subgradient: Callable | None = None
    backward_fn: Callable | None = None
    arrays: dict = field(default_factory=dict)  # name -> ArgSpec, differentiable, in order
    params: dict = field(default_factory=dict)  # name -> ArgSpec

    def __post_init__(self):
        from . import _slips  # the messages for slips in writing a derivation

        sig = _slips.signature(self.fn, self.name)
        ps = list(sig.parameters.values())
        if not ps or ps[0].kind not in (ps[0].POSITIONAL_ONLY, ps[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{self.name}: the forward's first argument is the array namespace `xp`")
        _slips.check_first_parameter(self.name, ps[0])
        for p in ps[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{self.name}: *args/**kwargs cannot be drawn; name every argument")
            if isinstance(p.annotation, str):  # `x: ("D")` under `from __future__ import annotations`
                raise _slips.string_annotation(self.name, p.name, p.annotation)
            keyword = p.kind == p.KEYWORD_ONLY
            (self.params if keyword else self.arrays)[p.name] = as_spec(p.name, p.annotation, p.default, keyword)
        if not self.arrays:
            raise TypeError(f"{self.name}: no differentiable array (positional argument after xp)")
        self.regimes = _regimes(self.name, self.regimes)
        if isinstance(self.sizes, dict):
            _slips.check_sizes(self.name, self.sizes, self.symbols())  # a misspelt symbol, with a hint
        self.sizes = _sizes(self.name, self.sizes, self.symbols())
        self.dtypes = _dtypes(self.name, self.dtypes)
        self.rtol = _rtol(self.name, self.rtol)
        if self.like is not None and not isinstance(self.like, str):
            raise TypeError(f"{self.name}: like= takes the name of a catalogue op (see `gradaudit list`), "
                            f"got {self.like!r}")

    def __call__(self, xp, *args, **kwargs):  # the forward stays callable as written
        return self.fn(xp, *args, **kwargs)

    def backward(self, fn: Callable) -> Callable:
        """Decorator: the hand-derived backward of this derivation. Returns `fn` unchanged."""
        self.backward_fn = fn
        return fn

    @property
    def target_name(self) -> str:
        return self.backward_fn.__name__ if self.backward_fn is not None else f"{self.name}_backward"

    def symbols(self) -> list[str]:
        seen = []
        for s in (*self.arrays.values(), *self.params.values()):
            for d in s.dims():
                if d not in seen:
                    seen.append(d)
        return seen

    def describe(self) -> dict:
        return {"name": self.name, "target": self.target_name, "source": self.source, "formula": self.formula,
                "arrays": {n: list(s.shape) for n, s in self.arrays.items()}, "regimes": list(self.regimes)}

    # -- what the runner needs (imported lazily: hypothesis, properties) ------------------------

    def inputs(self, regime: str, breadth: str):
        """The strategy of cases in `regime` at shape `breadth` (properties.strategies)."""
        from ._draw import cases

        return cases(self, regime, breadth)

    def spec(self):
        """An OpSpec for the runner (tolerance, kinks); its reference pair is never looked up.

        The tolerance: `like=`'s op's, else a normalisation's when the forward centres an input (it
        does not change when that input gets an offset constant along some axes: the condition factor
        |x|/sqrt(σ² + eps) over those axes, as the catalogue's normalisation ops have it), raised to
        `rtol=` where given."""
        from properties.spec import OpSpec

        kinks, subgradient, tolerance = self.kinks, self.subgradient, None
        if self.like is not None:
            base = self._like()
            kinks = kinks or _like_hook(self, "kinks", base.kinks)
            subgradient = subgradient or _like_hook(self, "subgradient", base.subgradient)
            tolerance = base.tolerance and _like_tolerance(self, base.tolerance)
        else:
            tolerance = self._centring_tolerance()
        if self.rtol is not None:
            from properties.spec import Tolerance

            tolerance = Tolerance(tolerance.rtol_factor if tolerance else 1.0,
                                  (tolerance.reason + "; " if tolerance else "") + f"rtol={self.rtol} (the derivation's)",
                                  rtol_min=dict(self.rtol))
        return OpSpec(name=self.name, family="derivation", source=self.source or self.name, inputs=self.inputs,
                      regimes=self.regimes, kinks=kinks, subgradient=subgradient, tolerance=tolerance,
                      dtypes=self.dtypes)

    def _like(self):
        from properties import catalogue

        ops = catalogue.load()
        if self.like not in ops:
            raise ValueError(f"{self.name}: like={self.like!r} is not a catalogue op (see `gradaudit list`)")
        base = ops[self.like]
        if tuple(base.array_names) != tuple(self.arrays):
            raise ValueError(f"{self.name}: like={self.like!r} needs the arrays of {self.like} "
                             f"({', '.join(base.array_names)}) in that order; {self.name} has {', '.join(self.arrays)}")
        return base

    def _centring_tolerance(self):
        """The normalisation tolerance when the forward centres one of its inputs (else None)."""
        import array_api_compat.numpy as xp_np

        from properties.spec import Tolerance
        from properties.tolerances import centring_axes, centring_condition

        found: dict = {}
        fn = self.fn

        def forward(*arrays, **params):
            return fn(xp_np, *arrays, **params)

        def factor(case) -> float:
            key = (tuple(a.shape for a in case.arrays.values()),
                   tuple(sorted((k, repr(v)) for k, v in case.params.items() if not hasattr(v, "shape"))))
            if key not in found:
                found[key] = centring_axes(forward, case)
            if found[key] is None:
                return 1.0
            name, axes = found[key]
            eps = case.params.get("eps", DEFAULT_EPS)
            return centring_condition(case.arrays[name], axes, float(eps) if isinstance(eps, (int, float)) else DEFAULT_EPS)

        return Tolerance(factor, "a normalisation's condition |x|/sqrt(σ² + eps) over the axes the forward centres "
                                 "(found by probing it; eps from an `eps` parameter, else 1e-5)")

    def target(self, name: str | None = None, *, wrap=None):
        """The runner's Target; `wrap(fn, fname)` guards each call into the user's functions."""
        from ._xp_target import derivation_target

        return derivation_target(self, name or self.target_name, wrap=wrap)


DEFAULT_EPS = 1e-5  # a normalisation's eps when the derivation has no `eps` parameter: torch's and cs231n's


def _regimes(name: str, regimes) -> tuple:
    from properties.strategies import REGIMES

    if isinstance(regimes, str):
        regimes = (regimes,)
    try:
        regimes = tuple(regimes)
    except TypeError:
        raise TypeError(f"{name}: regimes= takes regime names, e.g. ('typical', 'large'); got {regimes!r}") from None
    bad = [r for r in regimes if r not in REGIMES]
    if bad or not regimes:
        raise ValueError(f"{name}: unknown value regime(s) {', '.join(map(repr, bad)) or '(none given)'} in regimes=; "
                         f"known: {', '.join(REGIMES)}")
    return regimes


def _sizes(name: str, sizes, symbols) -> dict:
    if not isinstance(sizes, dict):
        raise TypeError(f"{name}: sizes= takes a dict symbol -> sizes, e.g. {{'N': (1, 2, 3)}}; got {sizes!r}")
    out = {}
    for sym, choices in sizes.items():
        if sym not in symbols:
            raise ValueError(f"{name}: sizes= names {sym!r}, which no shape uses; the symbols are "
                             f"{', '.join(map(repr, symbols)) or '(none)'}")
        if isinstance(choices, int):
            choices = (choices,)
        try:
            choices = tuple(choices)
        except TypeError:
            raise TypeError(f"{name}: sizes[{sym!r}] must be sizes to draw from, e.g. (1, 2, 3); got {choices!r}") from None
        if not choices or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in choices):
            raise ValueError(f"{name}: sizes[{sym!r}] must be a non-empty tuple of ints >= 1; got {choices!r}")
        out[sym] = choices
    return out


def _dtypes(name: str, dtypes) -> tuple | None:
    known = ("float64", "float32")
    if dtypes is None:
        return None
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    dtypes = tuple(str(getattr(d, "__name__", d)) for d in dtypes)
    bad = [d for d in dtypes if d not in known]
    if bad or not dtypes:
        raise ValueError(f"{name}: dtypes= takes {' and/or '.join(known)}; got {', '.join(map(repr, bad)) or 'none'}")
    return dtypes


def _rtol(name: str, rtol) -> dict | None:
    import math

    known = ("float64", "float32")
    if rtol is None:
        return None
    per = rtol if isinstance(rtol, dict) else {d: rtol for d in known}
    for d, r in per.items():
        if d not in known:
            raise ValueError(f"{name}: rtol= names dtype {d!r}; known: {', '.join(known)}")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (math.isfinite(r) and 0 < r < 1):
            raise ValueError(f"{name}: rtol must be a relative tolerance in (0, 1), e.g. 1e-4; got {r!r}"
                             + (f" for {d}" if isinstance(rtol, dict) else ""))
    return {d: float(r) for d, r in per.items()}


def _like_hook(d: "Derivation", what: str, hook):
    """A like= op's kinks/subgradient hook, with a clear error when it needs a parameter d lacks."""
    if hook is None:
        return None

    def call(case, *args):
        try:
            return hook(case, *args)
        except KeyError as e:
            raise ValueError(_like_missing(d, what, e)) from None

    return call


def _like_tolerance(d: "Derivation", tol):
    import dataclasses

    if not callable(tol.rtol_factor):
        return tol
    factor = tol.rtol_factor

    def checked(case):
        try:
            return factor(case)
        except KeyError as e:
            raise ValueError(_like_missing(d, "tolerance", e)) from None

    return dataclasses.replace(tol, rtol_factor=checked)


def _like_missing(d: "Derivation", what: str, e: KeyError) -> str:
    key = e.args[0] if e.args else "?"
    have = ", ".join(list(d.arrays) + list(d.params))
    return (f"{d.name}: like={d.like!r} takes the {what} of the catalogue op {d.like}, which reads {key!r}; "
            f"{d.name} has no argument {key!r} (it has {have}): add a keyword-only parameter {key!r} (e.g. "
            f"`*, {key}=1e-5`) or drop like= (a normalisation gets its tolerance without it)")


def derivation(fn: Callable | None = None, *, source: str = "", formula: str = "", regimes=("typical",),
               sizes: dict | None = None, like: str | None = None, kinks: Callable | None = None,
               subgradient: Callable | None = None, backward: Callable | None = None,
               rtol: float | dict | None = None, dtypes=None):
    """Declare a forward (written against the array-API namespace `xp`) whose backward is
    hand-derived. Use bare (`@gradaudit.derivation`) or with options:

    source: where the formula comes from ("seed 000 § RNN"), shown in the report;
    formula: the formula as written in the notes, for the report;
    regimes: value regimes to draw (`typical`, `large`, `overflow`, `kinks`, `saturated`, `tiny`,
        `near_constant`; see `properties/strategies.py`);
    sizes: symbol -> sizes to draw it from (default 1..5; distinct symbols get distinct sizes
        whenever the choices allow, so that a missing transpose cannot type-check by luck);
    like: a catalogue op whose kink classification and tolerance apply (same array names, in order);
    kinks, subgradient: the same hooks as a catalogue OpSpec;
    backward: the backward, instead of decorating it with `@<forward>.backward`;
    rtol: the smallest relative tolerance to judge with (a float, or {"float32": 1e-3, ...}): the
        policy's own (from the dtype and the sizes) when it is larger;
    dtypes: the dtypes to check it in, e.g. ("float64",) (default: the run's).
    A forward that centres an input (a normalisation) gets a tolerance for the digits the centring
    cancels without any of these (see Derivation.spec).
    """
    def wrap(f):
        d = Derivation(f, f.__name__, source=source, formula=formula, regimes=regimes,
                       sizes=sizes if sizes is not None else {}, like=like, kinks=kinks, subgradient=subgradient,
                       rtol=rtol, dtypes=dtypes)
        if backward is not None:
            d.backward(backward)
        return d

    return wrap(fn) if fn is not None else wrap
