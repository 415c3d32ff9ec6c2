"""The thing under test: a forward/backward pair, from the catalogue or from a user's code, and the
forward each oracle differentiates for it."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import oracles

from .spec import OpSpec

__all__ = ["Target"]


@dataclass(frozen=True)
class Target:
    name: str  # shown as the record's `target`
    op: str  # the catalogue op (or the derivation) it implements
    forward: Callable  # (*arrays, **params) -> (out, cache)
    backward: Callable  # (*douts, cache) -> grads
    # The forward the frameworks differentiate, written against an array-API namespace:
    # (xp, *arrays, **params) -> out (a `@gradaudit.derivation`). None: the catalogue op's own
    # framework forwards (oracles/torch_ops.py, oracles/jax_ops.py).
    xp_forward: Callable | None = None
    # The NumPy forward that finite differences differentiate, (*arrays, **params) -> (out, cache).
    # None: the target's own `forward`. An audit sets the catalogue's reference forward here: the
    # user's forward is on trial too, and a judge that inherited its mistakes could not triangulate.
    judge_forward: Callable | None = None
    # How a forward mismatch names the forward (an audit: the user's forward function); None: not named
    forward_name: str | None = None

    @classmethod
    def reference(cls, spec: OpSpec) -> "Target":
        return cls(name=f"{spec.name}_backward", op=spec.name, forward=spec.forward, backward=spec.backward)

    @property
    def user_code_here(self) -> bool:
        """Whether the forward and backward run in this process; not where the oracles run beside them in
        an audit child (`oracles_beside_user_code`: a derivation, a gradaudit.function subject): this
        process's global random generators then need no seeding for them."""
        return not getattr(self, "oracles_beside_user_code", False)

    def forward_fn(self, *arrays, **params):
        """The output alone of the forward that finite differences differentiate."""
        return (self.judge_forward or self.forward)(*arrays, **params)[0]

    @property
    def numeric_inherits_forward(self) -> bool:
        """Whether finite differences differentiate the target's own forward (and so inherit its mistakes)."""
        return self.judge_forward is None

    def oracle_forward(self, oracle: str) -> Callable:
        """The forward `oracle` differentiates, (*arrays, **params) -> out, in its own array type."""
        if oracle == "numeric":
            return self.forward_fn
        if self.xp_forward is not None:
            return _bound(self.xp_forward, oracle)
        return oracles.get(oracle).builtin(self.op)

    def framework(self, oracle: str):
        """Where `oracle` runs for this target, as the oracle modules describe themselves:
        `check_available(device)`, `device_name(device)`, `flags()` (a skip's reason and the record's
        device name and flags). Here: the oracle module in this process. An audited derivation's
        frameworks run in the audit child, which says (gradaudit/_proxy.py)."""
        return oracles.get(oracle)

    def oracle_vjp(self, oracle: str) -> Callable:
        """How `oracle` differentiates `oracle_forward(oracle)`: the oracle module's `vjp`. A target
        whose oracles need more (a `gradaudit.function` subject: a bypassed custom rule, a forward
        computed in two dtypes) overrides it with a callable of the same signature."""
        return oracles.get(oracle).vjp


@functools.cache
def _bound(xp_forward: Callable, oracle: str) -> Callable:
    # one object per (forward, oracle): the JAX oracle keys its compile cache by the forward
    return functools.partial(xp_forward, oracles.get(oracle).namespace())
