"""The thing under test: a forward/backward pair, from the catalogue or from a user's code."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .spec import OpSpec


@dataclass(frozen=True)
class Target:
    name: str  # shown as the record's `target`
    op: str  # the catalogue op whose framework forwards are the oracles
    forward: Callable  # (*arrays, **params) -> (out, cache)
    backward: Callable  # (*douts, cache) -> grads

    def forward_fn(self, *arrays, **params):
        return self.forward(*arrays, **params)[0]

    @classmethod
    def reference(cls, spec: OpSpec) -> "Target":
        return cls(name=f"{spec.name}_backward", op=spec.name, forward=spec.forward, backward=spec.backward)
