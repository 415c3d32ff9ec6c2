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
        if isinstance(self.regimes, str):
            self.regimes = (self.regimes,)
        self.regimes = tuple(self.regimes)
        _slips.check_sizes(self.name, self.sizes, self.symbols())

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
        """An OpSpec for the runner (tolerance, kinks); its reference pair is never looked up."""
        from properties.spec import OpSpec

        kinks, subgradient, tolerance = self.kinks, self.subgradient, None
        if self.like is not None:
            from properties import catalogue

            ops = catalogue.load()
            if self.like not in ops:
                raise ValueError(f"{self.name}: like={self.like!r} is not a catalogue op (see `gradaudit list`)")
            base = ops[self.like]
            kinks, subgradient, tolerance = kinks or base.kinks, subgradient or base.subgradient, base.tolerance
        return OpSpec(name=self.name, family="derivation", source=self.source or self.name, inputs=self.inputs,
                      regimes=self.regimes, kinks=kinks, subgradient=subgradient, tolerance=tolerance)

    def target(self, name: str | None = None, *, wrap=None):
        """The runner's Target; `wrap(fn, fname)` guards each call into the user's functions."""
        from ._xp_target import derivation_target

        return derivation_target(self, name or self.target_name, wrap=wrap)


def derivation(fn: Callable | None = None, *, source: str = "", formula: str = "", regimes=("typical",),
               sizes: dict | None = None, like: str | None = None, kinks: Callable | None = None,
               subgradient: Callable | None = None, backward: Callable | None = None):
    """Declare a forward (written against the array-API namespace `xp`) whose backward is
    hand-derived. Use bare (`@gradaudit.derivation`) or with options:

    source: where the formula comes from ("seed 000 § RNN"), shown in the report;
    formula: the formula as written in the notes, for the report;
    regimes: value regimes to draw (`typical`, `large`, `overflow`, `kinks`, `saturated`, `tiny`,
        `near_constant`; see `properties/strategies.py`);
    sizes: symbol -> sizes to draw it from (default 1..5; distinct symbols get distinct sizes
        whenever the choices allow, so that a missing transpose cannot type-check by luck);
    like: a catalogue op whose kink classification and tolerance apply (same array names);
    kinks, subgradient: the same hooks as a catalogue OpSpec;
    backward: the backward, instead of decorating it with `@<forward>.backward`.
    """
    def wrap(f):
        d = Derivation(f, f.__name__, source=source, formula=formula, regimes=regimes, sizes=dict(sizes or {}),
                       like=like, kinks=kinks, subgradient=subgradient)
        if backward is not None:
            d.backward(backward)
        return d

    return wrap(fn) if fn is not None else wrap
