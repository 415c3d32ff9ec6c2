"""The op spec: one small declarative entry per derivation, and the case it is checked on."""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from hypothesis.strategies import SearchStrategy

import reference_impl

__all__ = ["Case", "OpSpec", "Tolerance", "to_jsonable"]


@dataclass(frozen=True)
class Tolerance:
    """An op's override of the policy: multiplies the policy's rtol (never below 1). `reason`, the
    numerical reason, is mandatory. The factor may depend on the case: a condition number. `rtol_min`
    (dtype -> rtol): the smallest rtol to judge with, a derivation's `rtol=`."""

    rtol_factor: float | Callable[["Case"], float]
    reason: str
    rtol_min: dict | None = None


@dataclass
class Case:
    """One input: the differentiable arrays (float64 masters, in the op's order) and the params."""

    arrays: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)

    def cast(self, dtype: str) -> dict[str, np.ndarray]:
        return {n: a.astype(dtype) for n, a in self.arrays.items()}

    def shapes(self) -> dict[str, list[int]]:
        return {n: list(a.shape) for n, a in self.arrays.items()}

    def scalar_params(self) -> dict[str, Any]:
        # a 0-d array param (traced by JAX, so one compile serves every value) is a scalar too
        return {k: (v.item() if isinstance(v, np.ndarray) else v) for k, v in self.params.items()
                if not isinstance(v, np.ndarray) or v.ndim == 0}

    def summary(self) -> str:
        parts = [f"{n}: {a.dtype}{list(a.shape)}" for n, a in self.arrays.items()]
        parts += [f"{k}: {v.dtype}{list(v.shape)}" if isinstance(v, np.ndarray) else f"{k}={v!r}"
                  for k, v in self.params.items()]
        return ", ".join(parts)

    def __repr__(self) -> str:  # what Hypothesis prints for a falsifying example
        return f"Case({self.summary()})"


@dataclass(frozen=True)
class OpSpec:
    """A catalogue entry. The reference pair and the framework forwards are found by `name`
    (reference_impl.NAME_forward/NAME_backward, oracles.torch_ops.NAME, oracles.jax_ops.NAME)."""

    name: str
    family: str
    source: str  # where the derivation comes from: "seed 000 § Softmax" or "cs231n"
    # (regime, breadth) -> strategy of cases; breadth is one of properties.strategies.BREADTHS
    inputs: Callable[[str, str], SearchStrategy[Case]]
    regimes: tuple[str, ...] = ("typical",)
    # (case, tol) -> why the case lies within `tol` of a non-differentiable point, or None
    kinks: Callable[[Case, float], str | None] | None = None
    # (case, douts, grads) -> is the target's gradient a valid subgradient at the kink: (ok, why), or
    # a properties.subgradient.Validity that also names the pattern of a failure
    subgradient: Callable[[Case, tuple, dict], tuple] | None = None
    tolerance: Tolerance | None = None
    dtypes: tuple[str, ...] | None = None  # the dtypes it is checked in (None: the run's); a derivation's `dtypes=`

    @property
    def forward(self) -> Callable:
        return getattr(reference_impl, f"{self.name}_forward")

    @property
    def backward(self) -> Callable:
        return getattr(reference_impl, f"{self.name}_backward")

    @property
    def array_names(self) -> tuple[str, ...]:
        sig = inspect.signature(self.forward)
        return tuple(p.name for p in sig.parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "source": self.source,
                "regimes": list(self.regimes), "arrays": list(self.array_names),
                "tolerance": None if self.tolerance is None else
                {"rtol_factor": self.tolerance.rtol_factor if not callable(self.tolerance.rtol_factor)
                 else "per case", "reason": self.tolerance.reason}}


def to_jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)
