"""What the cs231n dialect (gradaudit/cs231n.py) builds its targets from: a pair of the user's
functions, and the validation of everything they return (a misbehaving function becomes an `error`
that names it, the gradient, and expected vs got)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from properties.verdict import CodeUnderTestError

__all__ = ["AdapterError", "Pair", "StandingNote", "UserCache", "all_finite", "audit_target", "check_finite",
           "describe_value", "unpack"]


class AdapterError(CodeUnderTestError):
    """The user's function returned something the cs231n convention does not allow."""


class StandingNote(str):
    """A note on a target that every one of its records carries, passing or not (a note is otherwise
    context for a fail or an error): what the check of that target could and could not judge."""

    standing = True


def audit_target(name, op, forward, backward, judge_forward):
    """A user's functions as a Target. The finite differences differentiate the catalogue's reference
    forward (`judge_forward`), not the user's: under audit the user's forward is on trial too, and a
    third judge that inherited its mistakes could not triangulate them."""
    from properties.target import Target

    return Target(name, op, forward, backward, judge_forward=judge_forward)


@dataclass(frozen=True)
class Pair:
    target: str  # reported as the record's `target`: the backward, or the loss function
    forward: str | None  # the user's forward; None for a loss `loss, dx = f(...)`
    op: str  # the catalogue op
    call: Callable | None  # (arrays, params) -> the user's forward's arguments; None: a special adapter
    outputs: int = 1  # arrays the forward returns before its cache
    optional: tuple[str, ...] = ()  # used when the file defines them; the pair is checked without them

    @property
    def required(self) -> tuple[str, ...]:
        return (self.target,) if self.forward is None else (self.forward, self.target)

    @property
    def functions(self) -> tuple[str, ...]:
        return self.required + self.optional


# ---- validation of what the user's code returns ----------------------------------------------

def describe_value(v) -> str:
    if v is None:
        return "None"
    if isinstance(v, np.ndarray):
        return f"an array {v.dtype}{list(v.shape)}"
    if isinstance(v, (tuple, list)):
        return f"a {type(v).__name__} of {len(v)}"
    return type(v).__name__


def unpack(fname: str, result, n: int, what: str):
    """`result` must be a tuple/list of n values (named by `what`)."""
    if not isinstance(result, (tuple, list)) or len(result) != n:
        raise AdapterError(f"{fname} returned {describe_value(result)}, expected ({what})")
    return tuple(result)


class UserCache:
    """The user's cache, plus whether everything that went into the forward and came out was finite."""

    def __init__(self, user_cache, finite: bool):
        self.user, self.finite = user_cache, finite


def all_finite(*xs) -> bool:
    for x in xs:
        for a in (x if isinstance(x, tuple) else (x,)):
            try:
                arr = np.asarray(a)
            except Exception:
                return False
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                return False
    return True


def check_finite(fname: str, grads, names, cache: UserCache, douts):
    """A NaN/Inf gradient although the inputs, dout and the function's own forward are finite is
    not a numerical accident: the function misbehaves."""
    if not cache.finite or not all_finite(*douts):
        return
    for n, g in zip(names, grads):
        if isinstance(g, np.ndarray) and g.dtype.kind == "f" and not np.isfinite(g).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(g))[0])
            bad = g[idx] if g.ndim else g
            raise AdapterError(f"{fname} returned {bad} in grad[{n}] at index {idx}, expected finite values "
                               f"(the inputs, the upstream gradient and the forward output are all finite)")
