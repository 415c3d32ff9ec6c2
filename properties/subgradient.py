"""Is the target's gradient at a kink *a* valid choice?

At a non-differentiable point any convex combination of the one-sided gradients is acceptable
(CONVENTIONS: "a hand-written choice must still be a valid subgradient"). There is no cheap
generic test for that: a sum of kinks with upstream gradients of both signs is neither convex
nor concave, so one-sided directional derivatives do not bound it. Each op with kinks therefore
states its own test (`OpSpec.subgradient`), built from the helpers here. Every test is a set of
NECESSARY conditions of validity (so a valid choice never fails it) that a wrong choice breaks:
credit counted twice at a tie, credit to an element that is not a maximum, credit of the wrong sign.
Away from the kinks the gradient is unique, and the tests check that too: the verdict `kink`
replaces the whole comparison, so it must not hide an error elsewhere in the same case.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Validity", "agrees", "fraction_of", "in_affine_box", "shared_credit"]


class Validity(NamedTuple):
    """A subgradient test's answer, and the pattern its failure shows (None: the gradient is wrong
    away from the kinks, not at them)."""

    ok: bool
    why: str
    pattern: str | None = None


def _atol(dtype, scale, n: int = 1):
    """Rounding slack of a gradient of `dtype` built from terms of magnitude `scale` (as the policy)."""
    return 64 * float(np.finfo(dtype).eps) * np.sqrt(max(n, 1)) * np.maximum(1.0, scale)


def fraction_of(grad, dout, where, *, name: str, what: str, atol: float = 1e-6) -> Validity:
    """At the positions `where`, grad must be lam * dout with lam in [0, 1] (relu at 0, hinge at 0)."""
    g, d = np.asarray(grad, np.float64)[where], np.broadcast_to(np.asarray(dout, np.float64), np.shape(grad))[where]
    tol = atol * max(1.0, float(np.abs(d).max(initial=0.0)))
    ok = np.all((np.abs(g) <= np.abs(d) + tol) & (g * d >= -tol * np.abs(d)))
    if ok:
        return Validity(True, f"grad[{name}] at {what} is between 0 and the upstream gradient (a valid subgradient)")
    return Validity(False, f"grad[{name}] at {what} is not a fraction in [0, 1] of the upstream gradient",
                    "invalid_subgradient")


def agrees(grad, expected, where, *, name: str, what: str) -> Validity:
    """Where the op is differentiable its gradient is unique: grad must equal `expected` at `where`."""
    g = np.asarray(grad, np.float64)
    e = np.broadcast_to(np.asarray(expected, np.float64), g.shape)
    where = np.broadcast_to(where, g.shape)
    err = np.abs(g - e)[where]
    tol = _atol(np.asarray(grad).dtype, np.abs(e)[where], g.size)
    if np.all(err <= tol):
        return Validity(True, f"grad[{name}] {what} is the derivative")
    return Validity(False, f"grad[{name}] {what} is not the derivative (off by up to {float(err.max()):.3g}), "
                           f"whatever is chosen at the kinks")


def shared_credit(grad, groups, *, name: str, what: str) -> Validity:
    """grad (any shape, read flat) must be Σ_g dout_g · λ_g, where each group g (a window of a
    max-pool, the pair of a max gate) hands its upstream gradient dout_g to its maxima `members_g`
    (flat indices) with λ_g a convex combination over them. Groups may overlap (stride < window).

    Checked, all necessary: an element that is a maximum of no tied group gets exactly the
    gradients of the groups it is the unique maximum of; an element of tied groups gets a value
    between the sums of those groups' negative and positive upstream gradients; and over each
    connected set of tied groups the credit adds up to their upstream gradients (counting a tie
    twice breaks this).
    """
    dtype = np.asarray(grad).dtype
    res = np.asarray(grad, np.float64).reshape(-1).copy()
    n = res.size
    lo, hi, mag = np.zeros(n), np.zeros(n), np.zeros(n)
    covered = np.zeros(n, bool)
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tied = []
    for d, members in groups:
        d, members = float(d), np.asarray(members, np.int64).reshape(-1)
        mag[members] += abs(d)
        if members.size == 1:
            res[members[0]] -= d
            continue
        tied.append((d, members))
        lo[members] += min(d, 0.0)
        hi[members] += max(d, 0.0)
        covered[members] = True
        root = find(members[0])
        for m in members[1:]:
            parent[find(m)] = root
    atol = _atol(dtype, mag, 8)
    bad = ~covered & (np.abs(res) > atol)
    if bad.any():
        i = int(np.argmax(bad))
        return Validity(False, f"grad[{name}] at flat index {i} is not the sum of the upstream gradients of the "
                               f"{what} it is the maximum of (off by {res[i]:.3g}): credit to a non-maximum",
                        "credit_at_ties")
    bad = covered & ((res < lo - atol) | (res > hi + atol))
    if bad.any():
        i = int(np.argmax(bad))
        return Validity(False, f"credit at a tie in {what}: grad[{name}] at flat index {i} is {res[i]:.6g}, outside "
                               f"[{lo[i]:.6g}, {hi[i]:.6g}] that a convex combination allows", "credit_at_ties")
    sums, want, slack = {}, {}, {}
    for i in np.flatnonzero(covered):
        r = find(i)
        sums[r] = sums.get(r, 0.0) + res[i]
        slack[r] = slack.get(r, 0.0) + atol[i]
    for d, members in tied:
        r = find(members[0])
        want[r] = want.get(r, 0.0) + d
    for r in want:
        if abs(sums[r] - want[r]) > slack[r]:
            return Validity(False, f"credit at a tie in {what} sums to {sums[r]:.6g} with upstream gradient "
                                   f"{want[r]:.6g}: not a convex combination (every tied element got the full "
                                   f"gradient?)", "credit_at_ties")
    if not tied:
        return Validity(True, f"no exact tie in {what}, only a near one (straddled by central differences, or made "
                              f"a tie by XLA's float32 flush-to-zero), and every maximum gets its whole upstream "
                              f"gradient")
    return Validity(True, f"credit at ties in {what} is a convex combination of the upstream gradient "
                          f"({len(tied)} tied group(s))")


def in_affine_box(grad, base, basis, *, what: str) -> Validity:
    """grad (flat) must be base + Σ_k λ_k basis[k] with every λ_k in [0, 1]: the chain rule through K
    ReLU-type kinks, each taking a derivative λ_k in its subdifferential [0, 1]. `base` is the
    gradient with every λ_k = 0, `basis[k]` what λ_k = 1 adds (both float64, flat).

    Solved by least squares: the residual must vanish (the gradient is of that form at all), and
    when the λ are determined (independent columns) they must lie in [0, 1]; when they are not,
    only the first condition is checked (sound, weaker)."""
    dtype = np.asarray(grad).dtype
    g = np.asarray(grad, np.float64).reshape(-1)
    r = g - np.asarray(base, np.float64).reshape(-1)
    a = np.asarray(basis, np.float64).reshape(len(basis), -1).T if len(basis) else np.zeros((g.size, 0))
    keep = np.abs(a).max(axis=0, initial=0.0) > 0  # a kink whose λ changes nothing
    a = a[:, keep]
    atol = float(_atol(dtype, max(np.abs(g).max(initial=0.0), np.abs(base).max(initial=0.0)), g.size))
    lam = np.linalg.lstsq(a, r, rcond=None)[0] if a.shape[1] else np.zeros(0)
    resid = float(np.abs(r - a @ lam).max(initial=0.0))
    if resid > atol:
        return Validity(False, f"the gradient is not the chain rule through {what} for any choice of derivative "
                               f"at the kinks (off by {resid:.3g})")
    if a.shape[1] == 0:
        return Validity(True, f"the kinks of {what} do not change the gradient here")
    sv = np.linalg.svd(a, compute_uv=False)
    if sv[-1] <= 1e-8 * sv[0]:
        return Validity(True, f"the gradient is the chain rule through {what} for some derivative at the kinks "
                              f"(their contributions are dependent: [0, 1] not checked)")
    # rounding of up to atol in every element of grad moves λ_k by at most |row k of pinv(a)|_1 * atol
    slack = 2 * atol * np.abs(np.linalg.pinv(a)).sum(axis=1)
    if np.all((lam >= -slack) & (lam <= 1 + slack)):
        return Validity(True, f"the gradient is the chain rule through {what} with derivatives in [0, 1] at the "
                              f"kinks (a valid subgradient: {np.round(lam, 3).tolist()})")
    return Validity(False, f"the gradient takes derivative(s) {np.round(lam, 3).tolist()} at the kinks of {what}: "
                           f"outside the subdifferential [0, 1]", "invalid_subgradient")
