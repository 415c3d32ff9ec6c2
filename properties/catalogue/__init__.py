"""The op catalogue: one `register(OpSpec(...))` per derivation, in the family's module here.

`load()` is the one way in: it imports every module of this package (each registers its ops) and
returns the catalogue, op name -> OpSpec. Importing this package loads nothing by itself.

Adding an op: its reference pair in reference_impl/, its framework forwards in oracles/torch_ops.py
and oracles/jax_ops.py, and one `register(OpSpec(...))` in the family's module here.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from types import MappingProxyType
from typing import Mapping

from ..spec import OpSpec

__all__ = ["load", "register"]

_registered: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in _registered:
        raise ValueError(f"op {spec.name!r} is registered twice")
    _registered[spec.name] = spec
    return spec


@functools.cache
def load() -> Mapping[str, OpSpec]:
    """Every catalogue op, by name (read-only)."""
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{m.name}")
    return MappingProxyType(_registered)
