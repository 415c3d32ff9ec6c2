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
