"""Patterns named on code written the way students write it (tests/students/: loops, np.zeros,
slices), each with the sentence a student reads first; and none named where it does not hold.

Kept lean: the ci profile, float64, torch as the requested oracle, one check per student file.
"""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gradaudit
from properties import patterns
from properties.spec import Case

STUDENTS = Path(__file__).parent / "students"
FAST = dict(profile="ci", oracles=("torch",), dtypes=("float64",), raise_on_failure=False)

# file -> (target, pattern, words its sentence must hold)
EXPECTED = {
    "conv_overwrite.py": ("conv_backward_naive", "overwrite", ["`dx[window] = …`", "overlap", "`+=`"]),
    "pool_overwrite.py": ("max_pool_backward_naive", "overwrite", ["`dx[window] = …`", "overlap", "`+=`"]),
    "conv_pad0.py": ("conv_backward_naive", "pad_zero_slice", ["pad = 0", "`[pad:-pad]` is empty"]),
    "rnn_off_by_one.py": ("rnn_backward", "timestep", ["timestep 0", "reversed(range(T))"]),
    "affine_no_sum.py": ("affine_backward", "missing_sum", ["broadcasts b over axis 0", "`.sum(axis=0)`"]),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def student(request, tmp_path_factory):
    name = request.param
    recs = gradaudit.check(STUDENTS / name, convention="cs231n", report=tmp_path_factory.mktemp("students"), **FAST)
    return name, recs


def test_each_student_bug_is_named_with_a_sentence_before_any_number(student):
    name, recs = student
    target, pattern, words = EXPECTED[name]
    bad = [r for r in recs if r["status"] in ("fail", "error")]
    assert bad and all(r["target"] == target for r in bad), [(r["target"], r["message"]) for r in bad]
    named = [r for r in bad if r["pattern"] == pattern]
    assert named, [(r["pattern"], r["message"]) for r in bad]
    for r in named:
        sentence = r["explanation"]
        assert all(w in sentence for w in words), sentence
        # the message says it first: after the function's name, before the figures
        assert r["message"].index(sentence) < r["message"].index("grad[")
        assert r["message"].startswith(target)


@pytest.fixture(scope="module")
def derivations(tmp_path_factory):
    return gradaudit.check(STUDENTS / "derivation_factors.py", report=tmp_path_factory.mktemp("factors"), **FAST)


@pytest.mark.parametrize("target, factor", [("scaled_scores_backward", "√3"), ("gaussian_backward", "√(2π)"),
                                            ("wave_backward", "1/π")])
def test_irrational_constant_factors_are_named(derivations, target, factor):
    recs = [r for r in derivations if r["target"] == target and r["status"] == "fail"]
    assert recs and all(r["pattern"] == "constant_factor" for r in recs), [(r["pattern"], r["message"]) for r in recs]
    assert f"is {factor} times the right one" in recs[0]["explanation"], recs[0]["explanation"]
    if target == "scaled_scores_backward":  # √d: and which axis has that size
        assert "√3 = √q.shape[1]" in recs[0]["explanation"]


# ---- where a pattern must not be named ---------------------------------------------------------------

def _ev(arrays, params, grads):
    return SimpleNamespace(case=Case(arrays, params), arrays=arrays, grads=grads, dtype="float64")


def _conv(stride, window, wrong_at):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 7, 7))
    w = rng.standard_normal((1, 1, window, window))
    right = rng.standard_normal(x.shape)
    mine = right.copy()
    for idx in wrong_at:
        mine[(0, 0) + idx] += 1.0
    return _ev({"x": x, "w": w, "b": np.zeros(1)}, {"stride": stride, "pad": 0}, {"x": mine}), {"x": right}


def test_overwrite_needs_overlapping_windows_and_errors_only_where_they_overlap():
    # stride 2, window 3: rows/columns 2 and 4 are covered twice
    ev, theirs = _conv(2, 3, [(2, 2), (4, 2)])
    assert patterns.recognise_case(ev, "x", theirs, op="conv2d").pattern == "overwrite"
    # an error where a single window covers the element is something else
    ev, theirs = _conv(2, 3, [(2, 2), (1, 1)])
    assert getattr(patterns.recognise_case(ev, "x", theirs, op="conv2d"), "pattern", None) != "overwrite"
    # windows that do not overlap cannot be overwritten
    ev, theirs = _conv(3, 3, [(2, 2)])
    assert getattr(patterns.recognise_case(ev, "x", theirs, op="conv2d"), "pattern", None) != "overwrite"


def test_repeated_indices_are_named_only_when_the_error_sits_on_repeated_rows():
    w = np.ones((4, 3))
    idx = np.array([[0, 2, 2]])
    right = np.arange(12.0).reshape(4, 3) + 1
    mine = right.copy()
    mine[2] /= 2  # `dW[idx] += dout`: the repeated row 2 got one of its two contributions
    found = patterns.recognise_case(_ev({"w": w}, {"idx": idx}, {"w": mine}), "w", {"w": right}, op="embedding")
    assert found.pattern == "overwrite" and "np.add.at(dw, idx, …)" in found.explanation
    mine = right.copy()
    mine[0] /= 2  # row 0 appears once: not a lost repeat
    found = patterns.recognise_case(_ev({"w": w}, {"idx": idx}, {"w": mine}), "w", {"w": right}, op="embedding")
    assert getattr(found, "pattern", None) != "overwrite"


def test_a_single_index_outside_a_sequence_is_no_timestep_and_no_wrong_axis():
    b = np.random.default_rng(1).standard_normal((2, 5, 3))
    a = b.copy()
    a[:, 3] += 1
    ev = _ev({"x": b}, {}, {"x": a})
    assert patterns.recognise_case(ev, "x", {"x": b}, op="affine").pattern == "one_slice"
    assert patterns.recognise_case(ev, "x", {"x": b}, op="rnn").pattern == "timestep"


def test_a_step_written_into_the_previous_slot_is_a_timestep():
    b = np.random.default_rng(2).standard_normal((2, 4, 3))
    a = np.zeros_like(b)
    a[:, :-1] = b[:, 1:]  # dx[:, t - 1] = dx_t
    found = patterns.recognise(a, b, name="grad[x]", seq_axis=1)
    assert found.pattern == "timestep" and "slot t-1" in found.explanation


def test_arbitrary_ratios_are_no_constant():
    b = np.random.default_rng(3).standard_normal((3, 4))
    assert patterns.recognise(b * 1.2345678, b, shapes={"x": [3, 4]}) is None
    assert patterns.recognise(np.array([1.2345678]), np.array([1.0])) is None  # one number against another


def test_shapes_that_are_not_a_slip_get_no_pattern():
    assert patterns.recognise_shape("x", (1, 1, 2, 3), (1, 1, 2, 2), {"pad": 0}) is None  # not empty
    assert patterns.recognise_shape("x", (1, 1, 0, 0), (1, 1, 2, 2), {"pad": 1}) is None  # pad is not 0
    assert patterns.recognise_shape("b", (3,), (4,), {}) is None
    assert patterns.recognise_shape("w", (2, 3), (3, 2), {}).pattern == "transpose"  # dout.T @ x
    assert patterns.recognise_shape("w", (3, 3), (3, 3), {}) is None


def test_every_pattern_has_one_sentence():
    """The sentence table is the one place: every name the recognisers and the subgradient tests
    give has its sentence, and every sentence reads as advice to the student."""
    named = {"credit_at_ties", "invalid_subgradient", "overwrite", "pad_zero_slice", "missing_sum", "overflow",
             "constant_factor", "sign_flip", "zero_gradient", "transpose", "wrong_axis", "one_slice", "timestep",
             "tf32",
             "wrong_dtype", "batching", "ctx_intermediate"}  # gradaudit.function subjects (gradaudit/_subject.py)
    assert named == {k.split(":")[0] for k in patterns.SENTENCES}
    assert patterns.explain("credit_at_ties").startswith("your backward gives the gradient to every tied maximum")
