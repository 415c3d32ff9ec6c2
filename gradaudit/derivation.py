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
from typing import Any, Callable


DEFAULT_SIZES = (1, 2, 3, 4, 5)


# ---- what an argument is ----------------------------------------------------------------------

@dataclass(frozen=True)
class ArgSpec:
    """How to draw one argument: `kind` is array | const | labels | onehot | mask | choice | fixed."""

    kind: str
    shape: tuple = ()
    regime: str | None = None  # None: the cell's value regime
    scale: float = 1.0
    low: float | None = None  # with `high`: uniform values in [low, high] whatever the regime
    high: float | None = None
    classes: Any = None  # labels / onehot: a symbol or an int
    p: float = 0.5  # mask: probability of a 1
    values: tuple = ()  # choice

    def dims(self) -> list:
        return [d for d in self.shape if isinstance(d, str)] + (
            [self.classes] if isinstance(self.classes, str) else [])


def _shape(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for d in shape:
        if not (isinstance(d, str) or (isinstance(d, int) and d >= 0)):
            raise TypeError(f"a shape holds symbols (str) and sizes (int >= 0), got {d!r} in {shape!r}")
    return tuple(shape)


def array(*shape, regime: str | None = None, scale: float = 1.0, low: float | None = None,
          high: float | None = None) -> ArgSpec:
    """A float array of `shape`. Positional: differentiable; keyword-only: a constant parameter.
    `regime` fixes the value regime (default: the cell's); `low`/`high` draw uniform values instead
    (e.g. gate activations in (0, 1))."""
    if (low is None) != (high is None):
        raise ValueError("give both low and high, or neither")
    return ArgSpec("array", _shape(shape), regime=regime, scale=scale, low=low, high=high)


def const(*shape, **kw) -> ArgSpec:
    """A float array parameter (never differentiated); same options as `array`."""
    return ArgSpec(**{**array(*shape, **kw).__dict__, "kind": "const"})


def labels(*shape, classes) -> ArgSpec:
    """Integer class labels of `shape`, in [0, classes)."""
    return ArgSpec("labels", _shape(shape), classes=classes)


def onehot(*shape, classes) -> ArgSpec:
    """One-hot rows: a float array of shape (*shape, classes) with a single 1 per row."""
    return ArgSpec("onehot", _shape(shape), classes=classes)


def mask(*shape, p: float = 0.5) -> ArgSpec:
    """A float 0/1 array of `shape`, each element 1 with probability `p` (e.g. a dropout mask)."""
    return ArgSpec("mask", _shape(shape), p=p)


def choice(*values) -> ArgSpec:
    """A scalar parameter drawn from `values` (static for JAX: keep the set small)."""
    if not values:
        raise ValueError("choice() needs at least one value")
    return ArgSpec("choice", values=tuple(values))


def _as_spec(name: str, annotation, default, keyword: bool) -> ArgSpec:
    if isinstance(annotation, ArgSpec):
        spec = annotation
    elif annotation is inspect.Parameter.empty and isinstance(default, ArgSpec):
        spec = default  # `W=gradaudit.const("H", "H")`: a spec given as the default
    elif isinstance(annotation, (tuple, list)):
        spec = ArgSpec("array", _shape(tuple(annotation)))
    elif default is not inspect.Parameter.empty:
        return ArgSpec("fixed", values=(default,))
    else:
        raise TypeError(f"argument {name!r}: annotate it with a shape tuple such as (\"N\", \"D\") or a "
                        f"gradaudit spec (gradaudit.array, labels, onehot, const, mask, choice), or give it a default")
    if not keyword and spec.kind != "array":
        raise TypeError(f"argument {name!r}: only float arrays can be differentiable (positional); make "
                        f"{spec.kind} parameters keyword-only (after a `*`)")
    if keyword and spec.kind == "array":
        spec = ArgSpec(**{**spec.__dict__, "kind": "const"})
    return spec


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
        sig = inspect.signature(self.fn, eval_str=True)
        ps = list(sig.parameters.values())
        if not ps or ps[0].kind not in (ps[0].POSITIONAL_ONLY, ps[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{self.name}: the forward's first argument is the array namespace `xp`")
        for p in ps[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{self.name}: *args/**kwargs cannot be drawn; name every argument")
            keyword = p.kind == p.KEYWORD_ONLY
            (self.params if keyword else self.arrays)[p.name] = _as_spec(p.name, p.annotation, p.default, keyword)
        if not self.arrays:
            raise TypeError(f"{self.name}: no differentiable array (positional argument after xp)")
        if isinstance(self.regimes, str):
            self.regimes = (self.regimes,)
        self.regimes = tuple(self.regimes)

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

    def inputs(self, regime: str):
        from ._draw import cases

        return cases(self, regime)

    def spec(self):
        """An OpSpec for the runner (tolerance, kinks); its reference pair is never looked up."""
        from properties.spec import OpSpec

        kinks, subgradient, tolerance = self.kinks, self.subgradient, None
        if self.like is not None:
            from properties import catalogue  # noqa: F401
            from properties.spec import CATALOGUE

            if self.like not in CATALOGUE:
                raise ValueError(f"{self.name}: like={self.like!r} is not a catalogue op (see `gradaudit list`)")
            base = CATALOGUE[self.like]
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
