"""What a `@gradaudit.derivation` draws for each argument: `gradaudit.array`, `const`, `labels`,
`onehot`, `mask`, `choice`, or a shape tuple as the annotation (docs in gradaudit/derivation.py)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_SIZES", "ArgSpec", "array", "as_spec", "choice", "const", "labels", "mask", "onehot"]

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


def as_spec(name: str, annotation, default, keyword: bool) -> ArgSpec:
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
