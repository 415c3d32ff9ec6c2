"""Oracles: independent computations of a forward and its VJP (torch, jax, float64 finite differences).

Each oracle module has the same functions: `vjp(forward, arrays, params, douts, *, dtype, device)`
(the forward it differentiates comes from the caller: `properties.target.Target.oracle_forward`),
`check_available(device)`, `device_name(device)`, `flags()`; the framework oracles also `builtin(op)`
(the catalogue op written with the framework's own ops), `namespace()` (the framework as an
array-API namespace) and `set_tf32(enabled)`. Frameworks are imported lazily, on first use; one
that cannot be imported raises `OracleUnavailable` with a one-line reason.
"""
from __future__ import annotations

import importlib

from .base import OracleResult, OracleUnavailable, Projection, on_load

ORACLES = ("torch", "jax", "numeric")
DEVICES = ("cpu", "cuda")
_MODULES = {"torch": "oracles.torch_oracle", "jax": "oracles.jax_oracle", "numeric": "oracles.numeric"}

__all__ = ["ORACLES", "DEVICES", "OracleResult", "OracleUnavailable", "Projection", "get", "on_load"]


def get(name: str):
    """The oracle module called `name`."""
    if name not in _MODULES:
        raise ValueError(f"unknown oracle {name!r}; accepted: {', '.join(ORACLES)}")
    return importlib.import_module(_MODULES[name])
