"""The numeric oracle's random projections: how many it takes in each role, and that one per array
still flags a wrong gradient."""
import numpy as np
import pytest
from planted import PLANTED

from oracles import numeric
from oracles.base import Projection
from properties import catalogue
from properties.evaluate import evaluate
from properties.spec import Case
from properties.target import Target

CATALOGUE = catalogue.load()

AFFINE_BUGS = sorted(n for n, (op, *_) in PLANTED.items() if op == "affine")


def _planted(name):
    op, forward, backward, _ = PLANTED[name]
    return Target(name=backward.__name__, op=op, forward=forward, backward=backward)


def _medium_affine(seed=3):
    # 160 + 400 + 20 elements: past FULL_JACOBIAN_MAX_ELEMENTS, so finite differences project;
    # w square, so that a transposed dw has the right shape and only its values are wrong
    rng = np.random.default_rng(seed)
    return Case({"x": rng.standard_normal((8, 4, 5)), "w": rng.standard_normal((20, 20)), "b": rng.standard_normal(20)})


def _directions_used(ev):
    res = ev.sides[("numeric", "cpu")].result
    return {g.dirs.shape[0] for g in res.grads.values() if isinstance(g, Projection)}


def test_numeric_takes_every_direction_when_it_decides_alone():
    spec = CATALOGUE["affine"]
    ev = evaluate(spec, Target.reference(spec), _medium_affine(), "float64", [("numeric", "cpu")])
    assert ev.sides[("numeric", "cpu")].status == "pass"
    assert _directions_used(ev) == {numeric.DIRECTIONS}


def test_numeric_takes_one_direction_beside_a_framework_that_agrees():
    pytest.importorskip("torch")
    spec = CATALOGUE["affine"]
    # numeric listed first: the frameworks are judged first all the same
    ev = evaluate(spec, Target.reference(spec), _medium_affine(), "float64", [("numeric", "cpu"), ("torch", "cpu")])
    assert ev.sides[("torch", "cpu")].status == "pass" and ev.sides[("numeric", "cpu")].status == "pass"
    assert _directions_used(ev) == {numeric.CORROBORATING_DIRECTIONS}


@pytest.mark.parametrize("name", AFFINE_BUGS)
def test_numeric_decides_with_every_direction_when_the_framework_disagrees(name):
    pytest.importorskip("torch")
    ev = evaluate(CATALOGUE["affine"], _planted(name), _medium_affine(), "float64", [("torch", "cpu"), ("numeric", "cpu")])
    assert ev.sides[("torch", "cpu")].status == "fail"
    assert ev.sides[("numeric", "cpu")].status == "fail"  # it sides with torch against the target
    assert _directions_used(ev) == {numeric.DIRECTIONS}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", AFFINE_BUGS)
def test_one_random_direction_alone_still_flags_each_planted_affine_bug(name, seed):
    """With one direction per array (gradcheck fast_mode's check) and no framework beside it, finite
    differences still flag every planted affine bug."""
    from properties.evaluate import judge_side, run_target

    target = _planted(name)
    ev = run_target(target, _medium_affine(seed), "float64")
    real = numeric.DIRECTIONS
    try:
        numeric.DIRECTIONS = 1  # what the corroborating role takes, here deciding alone
        verdict = judge_side(CATALOGUE["affine"], target, ev, "numeric", "cpu")
    finally:
        numeric.DIRECTIONS = real
    assert {g.dirs.shape[0] for g in verdict.result.grads.values()} == {1}
    assert verdict.status == "fail", verdict.message


# ---- a point where the forward curves sharply within one step -----------------------------------------

def _row_norm(wrong: bool):
    import gradaudit

    @gradaudit.derivation
    def row_norm(xp, x: ("N", "D")):
        return x / xp.sqrt(xp.sum(x * x, axis=1, keepdims=True) + 1e-8)

    @row_norm.backward
    def row_norm_backward(dout, x):
        n = np.sqrt((x * x).sum(axis=1, keepdims=True) + 1e-8)
        y = x / n
        dx = (dout - y * (dout * y).sum(axis=1, keepdims=True)) / n
        return 2 * dx if wrong else dx

    return row_norm


@pytest.mark.parametrize("wrong", [False, True], ids=["right", "twice"])
def test_finite_differences_that_truncate_at_a_sharp_point_are_taken_again_with_a_smaller_step(wrong):
    """x/|x| at |x| ~ 1e-4: central differences at the default step (~6e-6) are off by ~1e-3 relative
    (truncation), so they alone disagree with a right backward that torch matches. Taken again at a
    tenth of the step they agree; a wrong backward stays a fail (torch fails it too)."""
    from properties.evaluate import REFINED, evaluate
    from properties.spec import Case

    d = _row_norm(wrong)
    x = np.array([[7e-5, -2e-5, 3e-5], [0.5, -1.0, 2.0]])
    douts = (np.array([[1.0, 0.5, -0.3], [0.2, -0.1, 0.4]]),)
    plain = numeric.vjp(d.target().oracle_forward("numeric"), {"x": x}, {}, douts, dtype="float64", device="cpu")
    refined = numeric.vjp(d.target().oracle_forward("numeric"), {"x": x}, {}, douts, dtype="float64", device="cpu",
                          step_scale=0.1)
    n = np.sqrt((x * x).sum(axis=1, keepdims=True) + 1e-8)
    exact = (douts[0] - (x / n) * (douts[0] * x / n).sum(axis=1, keepdims=True)) / n
    off, off_refined = np.abs(plain.grads["x"] - exact).max(), np.abs(refined.grads["x"] - exact).max()
    assert off > 1.0 and off_refined < off / 50  # truncation: the step squared
    ev = evaluate(d.spec(), d.target(), Case({"x": x}, {}), "float64", [("torch", "cpu"), ("numeric", "cpu")],
                  douts=douts)
    torch_side, numeric_side = ev.sides[("torch", "cpu")], ev.sides[("numeric", "cpu")]
    if wrong:
        assert torch_side.status == numeric_side.status == "fail", numeric_side.message
        assert REFINED not in numeric_side.notes
    else:
        assert torch_side.status == "pass" and numeric_side.status == "pass", numeric_side.message
        assert numeric_side.notes == [REFINED]
