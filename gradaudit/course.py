"""What the course's code has beyond a forward/backward pair: a loss whose regularisation convention
must be read from its value, a function that must agree with its partner on every example (naive
against vectorized), and the oracle that settles such a side question.
"""
from __future__ import annotations

import numpy as np


def first_oracle() -> str | None:
    """The oracle that settles a question on the side (naive vs vectorized, a layer's probe)."""
    import oracles

    for name in ("torch", "jax", "numeric"):
        try:
            oracles.get(name).check_available("cpu")
            return name
        except oracles.OracleUnavailable:
            continue
    return None


def reg_convention(fname: str, ratio: float, what: str) -> tuple[float, str]:
    """(reg_scale, a sentence) from how much a loss grows with reg, in units of reg·Σ W²: 1 is the
    convention reg·Σ W² (gradient 2·reg·W), 0.5 is ½·reg·Σ W² (gradient reg·W). A gradient is judged
    against the loss it comes with, whichever year's convention that is."""
    if np.isfinite(ratio) and abs(ratio - 1) < 1e-6:
        return 1.0, f"(Regularisation read from the loss value: reg·Σ W² over {what}, so the gradient carries 2·reg·W.)"
    if np.isfinite(ratio) and abs(ratio - 0.5) < 1e-6:
        return 0.5, f"(Regularisation read from the loss value: ½·reg·Σ W² over {what}, so the gradient carries reg·W.)"
    return 1.0, (f"{fname}'s loss grows by {ratio:.4g}·reg·Σ W² over {what} when reg is added: neither reg·Σ W² "
                 f"nor ½·reg·Σ W²; judged as reg·Σ W².")


def _pair_of(result):
    """(loss, dW) of a `loss, dW = f(W, X, y, reg)` call, or None (its own check names what it returned)."""
    return tuple(result) if isinstance(result, (tuple, list)) and len(result) == 2 else None


def linear_reg_scale(fname: str, fn) -> tuple[float, str]:
    """The convention of a linear classifier `loss, dW = fn(W, X, y, reg)`, read from its loss."""
    rng = np.random.default_rng(20)
    W, X, y, reg = rng.standard_normal((4, 3)), rng.standard_normal((5, 4)), np.array([0, 2, 1, 1, 0]), 0.5
    try:
        loss = [float(_pair_of(fn(W.copy(), X.copy(), y.copy(), r))[0]) for r in (reg, 0.0)]
    except Exception:
        return 1.0, ""  # the check itself calls the function again and reports what it does
    return reg_convention(fname, (loss[0] - loss[1]) / (reg * float((W * W).sum())), "W")


class Agreement:
    """A linear classifier against its partner (naive against vectorized) on every example it is
    checked on: they must agree in loss and dW. On the first disagreement an oracle says which one is
    out. The tally becomes a sentence in the target's notes (shown with its fails)."""

    def __init__(self, me: str, partner: str, partner_fn, notes: dict, convention: str):
        self.me, self.partner, self.partner_fn = me, partner, partner_fn
        self.notes, self.convention = notes, convention
        self.target = None  # set once built: the oracle differentiates its op
        self.examples = self.disagreements = 0
        self.first: str | None = None

    def check(self, W, X, y, reg, reg_scale, loss, dW) -> None:
        try:
            theirs = _pair_of(self.partner_fn(W.copy(), X.copy(), y.copy(), reg))
        except Exception:
            return  # the partner's own check reports what it does
        if theirs is None:
            return
        self.examples += 1
        what = self._difference((loss, dW), theirs, W.dtype, W, X)
        if what:
            self.disagreements += 1
            if self.first is None:
                self.first = what + self._decide(W, X, y, reg, reg_scale, (loss, dW), theirs)
        self.notes[self.me] = f"{self.sentence()} {self.convention}".strip()

    @staticmethod
    def _difference(mine, theirs, dtype, W, X) -> str | None:
        from properties import tolerances
        from properties.compare import compare

        pol = tolerances.policy(str(dtype), size=max(W.size, X.size), oracle="torch",
                                input_max=max(float(np.abs(W).max(initial=0)), float(np.abs(X).max(initial=0))))
        for label, a, b in (("the loss", mine[0], theirs[0]), ("dW", mine[1], theirs[1])):
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            if a.shape != b.shape:
                return f"{label} of shape {list(a.shape)} against {list(b.shape)}"
            c = compare(a, b, pol, ulp_dtype=str(dtype))
            if not c.ok:
                if a.ndim and c.worst_index is None:
                    return f"{label} differs"
                i = tuple(int(k) for k in c.worst_index) if a.ndim else ()
                return f"{label}{f' at index {i}' if i else ''}: {_short(a[i])} against {_short(b[i])}"
        return None

    def _decide(self, W, X, y, reg, reg_scale, mine, theirs) -> str:
        import oracles
        from properties import tolerances
        from properties.compare import compare

        oracle = first_oracle()
        if oracle is None or self.target is None:
            return ""
        try:
            res = oracles.get(oracle).vjp(self.target.oracle_forward(oracle), {"W": W},
                                          {"X": X, "y": y, "reg": reg, "reg_scale": reg_scale},
                                          (np.asarray(1.0, dtype=W.dtype),), dtype=str(W.dtype), device="cpu")
        except Exception:
            return ""
        pol = tolerances.policy(str(W.dtype), size=max(W.size, X.size), oracle=oracle,
                                input_max=max(float(np.abs(W).max(initial=0)), float(np.abs(X).max(initial=0))),
                                noise=res.info.get("noise", 0.0))

        def right(result):
            loss, dw = (np.asarray(r, dtype=np.float64) for r in result)
            dtype = str(W.dtype)
            if dw.shape != W.shape or (res.out is not None and not compare(loss, np.asarray(res.out), pol,
                                                                          ulp_dtype=dtype).ok):
                return False
            return compare(dw, np.asarray(res.grads["W"], dtype=np.float64), pol, ulp_dtype=dtype).ok

        me, partner = self.me, self.partner
        verdict = {(True, False): f"{partner} is the one that is out", (False, True): f"{me} is the one that is out",
                   (True, True): "both are within tolerance of it", (False, False): "neither agrees with it"}
        return f"; {oracle} decides: {verdict[(right(mine), right(theirs))]}"

    def sentence(self) -> str:
        me, partner = self.me, self.partner
        if self.disagreements:
            return (f"{me} and {partner} disagree on {self.disagreements} of {self.examples} examples (first: "
                    f"{self.first}).")
        return (f"{me} and {partner} agree on all {self.examples} examples: they share this result, so checking "
                f"one against the other cannot catch it.")


def _short(v) -> str:
    return f"{float(v):.6g}"


