import numpy as np
import pytest

from properties import patterns, tolerances
from properties.compare import compare, compare_projection


def pol(dtype="float64", size=10, oracle="torch"):
    return tolerances.policy(dtype, size=size, oracle=oracle)


def test_equal_arrays_pass_with_zero_error():
    a = np.arange(6.0).reshape(2, 3)
    c = compare(a, a.copy(), pol(), ulp_dtype="float64")
    assert c.ok and c.max_abs == 0 and c.max_ulp == 0 and c.needed_atol == 0


def test_worst_index_and_needed_tolerances():
    b = np.ones((3, 4))
    a = b.copy()
    a[2, 1] += 1e-3
    p = pol()
    c = compare(a, b, p, ulp_dtype="float64")
    assert not c.ok
    assert c.worst_index == (2, 1)
    assert c.max_abs == pytest.approx(1e-3)
    assert c.max_rel == pytest.approx(1e-3)
    # the reported smallest tolerances really are the boundary
    assert c.needed_atol == pytest.approx(1e-3 - p.rtol * 1.0, rel=1e-6)
    assert compare(a, b, tolerances.Policy(p.rtol, c.needed_atol * 1.001, "t"), ulp_dtype="float64").ok


def test_ulp_distance_counts_float32_spacing_at_the_tolerances_scale():
    b = np.array([1.0], dtype=np.float32)
    a = np.nextafter(np.nextafter(b, np.float32(2)), np.float32(2))
    p = pol("float32")
    c = compare(a, b, p, ulp_dtype="float32")
    # counted in the spacing at atol/rtol (2.0 here: the allowed error turns relative above it),
    # where float32's spacing is twice that at 1
    assert p.atol(1.0) / p.rtol == pytest.approx(2.0)
    assert c.max_ulp == pytest.approx(1.0)


def test_relative_and_ulp_figures_are_never_divided_by_about_zero():
    """An element next to 0 (here 1e-300, an underflowed softmax) with an error inside the tolerance:
    the figures stay in proportion to what the judge allowed, instead of 1e+40 ULP and an infinite
    relative error."""
    b = np.array([1.0, 1e-300, 0.0])
    a = b + np.array([0.0, 1e-14, 1e-14])
    c = compare(a, b, pol(), ulp_dtype="float64")
    assert c.ok
    assert c.max_rel <= 1.0 and c.max_ulp < 1e3


def test_nan_or_inf_on_one_side_only_is_a_nonfinite_mismatch():
    b = np.array([1.0, 2.0, 3.0])
    for bad in (np.nan, np.inf):
        a = b.copy()
        a[1] = bad
        c = compare(a, b, pol(), ulp_dtype="float64")
        assert c.nonfinite_mismatch and not c.ok and c.worst_index == (1,)


def test_matching_nonfinite_values_agree():
    a = np.array([np.inf, np.nan, 1.0])
    assert compare(a, a.copy(), pol(), ulp_dtype="float64").ok
    assert not compare(np.array([np.inf]), np.array([-np.inf]), pol(), ulp_dtype="float64").ok


def test_tiny_elements_are_judged_against_the_array_scale():
    # 1e-20 vs 0 next to an element of 1: rounding-level, must not fail
    a, b = np.array([1.0, 1e-20]), np.array([1.0, 0.0])
    assert compare(a, b, pol(), ulp_dtype="float64").ok


def test_projection_comparison_detects_a_wrong_gradient():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((20, 30))
    dirs = rng.standard_normal((3, 20, 30))
    values = dirs.reshape(3, -1) @ g.reshape(-1)
    p = pol(oracle="numeric")
    assert compare_projection(g, dirs, values, p, ulp_dtype="float64").ok
    assert not compare_projection(g * 0.5, dirs, values, p, ulp_dtype="float64").ok


def test_policy_is_tighter_for_float64_and_grows_with_size():
    assert pol("float64").rtol < pol("float32").rtol
    assert pol(size=10).rtol < pol(size=1000).rtol
    assert pol(oracle="numeric").rtol == tolerances.NUMERIC_RTOL


@pytest.mark.parametrize("make, expected", [
    (lambda b: -b, "sign_flip"),
    (lambda b: b / 4, "constant_factor"),
    (lambda b: b.T, "transpose"),
    (lambda b: np.zeros_like(b), "zero_gradient"),
])
def test_patterns_are_recognised(make, expected):
    b = np.random.default_rng(1).standard_normal((4, 4))
    assert patterns.recognise(make(b), b)[0] == expected


def test_timestep_pattern():
    b = np.random.default_rng(2).standard_normal((2, 5, 3))
    a = b.copy()
    a[:, 3] = 0
    found = patterns.recognise(a, b, seq_axis=1)
    assert found[0] == "timestep" and "timestep 3" in found[1]


def test_no_pattern_for_unstructured_error():
    rng = np.random.default_rng(3)
    b = rng.standard_normal((4, 5))
    assert patterns.recognise(b + rng.standard_normal((4, 5)), b) is None


def test_a_constant_factor_is_named_once_with_the_axis_of_that_size():
    b = np.random.default_rng(4).standard_normal((3, 5))
    found = patterns.recognise(b / 3, b, name="grad[x]", shapes={"x": [3, 5], "w": [5, 2]})
    assert found.pattern == "constant_factor" and found.factor == pytest.approx(1 / 3)
    assert "1/3" in found.why and "3 = x.shape[0]: divided by that size once too often" in found.why


def test_projections_show_a_constant_factor_only_through_two_directions_or_more():
    rng = np.random.default_rng(5)
    g, dirs = rng.standard_normal(40), rng.standard_normal((3, 40))
    values = dirs @ g * (1 + 1e-9 * rng.standard_normal(3))  # finite differences, nearly exact
    allowed = 1e-5 * (np.abs(values) + np.abs(dirs) @ np.abs(g))
    found = patterns.recognise_projection(dirs @ (g / 2), values, allowed, name="grad[b]", shapes={"b": [2, 20]})
    assert found.pattern == "constant_factor" and found.factor == pytest.approx(0.5, rel=1e-6)
    assert patterns.recognise_projection(-(dirs @ g), values, allowed).pattern == "sign_flip"
    assert patterns.recognise_projection(dirs[:1] @ (g / 2), values[:1], allowed[:1]) is None  # one number
    wrong = g.copy()
    wrong[:5] *= 3  # not a multiple of the right gradient: the three ratios differ
    assert patterns.recognise_projection(dirs @ wrong, values, allowed) is None


def test_a_failed_subgradient_test_names_what_it_found():
    """Credit at ties for a tie; a derivative outside [0, 1] at a kink otherwise; and a gradient that is
    wrong away from the kinks is no kink problem at all."""
    from properties import subgradient

    d, x = np.array([1.0, -2.0, 3.0]), np.array([0.0, 1.0, -1.0])
    assert subgradient.fraction_of(2 * d, d, x == 0, name="x", what="x = 0").pattern == "invalid_subgradient"
    assert subgradient.agrees(2 * d, d * (x > 0), x != 0, name="x", what="away").pattern is None
    tied = subgradient.shared_credit(np.array([1.0, 1.0]), [(1.0, [0, 1])], name="x", what="a max")
    assert not tied.ok and tied.pattern == "credit_at_ties"
    assert subgradient.shared_credit(np.array([0.5, 0.5]), [(1.0, [0, 1])], name="x", what="a max").ok


def test_a_comparison_keeps_the_allowed_error_of_every_element():
    pol = tolerances.policy("float64", size=4, oracle="torch")
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.5, 3.0, 4.0])
    c = compare(a, b, pol, ulp_dtype="float64")
    assert c.beyond.tolist() == [False, True, False, False] and c.allowed.shape == a.shape
    assert c.ratio == pytest.approx(float(np.max(c.err / c.allowed)))
    dirs = np.random.default_rng(6).standard_normal((3, 4))
    p = compare_projection(a, dirs, dirs @ a, tolerances.policy("float64", size=4, oracle="numeric"),
                           ulp_dtype="float64")
    assert p.directional and p.ok and not p.beyond.any() and p.allowed.shape == (3,)
