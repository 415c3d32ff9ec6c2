"""Unit tests of reference_impl: worked examples of the notes, kinks and ties, purity and dtypes.

Gradient correctness on random inputs is the differential suite's job (torch, jax, finite
differences); this file pins what that suite cannot: the notes' hand-computed numbers, the choice
made at each kink, that nothing is mutated, and that float32 stays float32.
"""
import ast
import pathlib

import numpy as np
import pytest

import reference_impl as R

# ---------------------------------------------------------------- one small non-square case per op
# op -> (rng, dtype) -> (arrays, params). Shapes have D != M, H != W, kernel height != width, and
# overlapping windows, so a transposed or mis-strided backward cannot pass by luck.


def _a(rng, dtype, *shape):
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def _arrays(*shapes):
    return lambda rng, dt: ([_a(rng, dt, *s) for s in shapes], {})


CASES = {
    "add_gate": _arrays((2, 3), (2, 3)),
    "multiply_gate": _arrays((2, 3), (2, 3)),
    "max_gate": _arrays((2, 3), (2, 3)),
    "sigmoid_neuron": _arrays((3,), (4, 2)),
    "chain_rule_example": _arrays((3,), (3,), (3,)),
    "affine": _arrays((2, 3, 2), (6, 4), (4,)),
    "linear_column": _arrays((4, 3), (3, 2), (4, 1)),
    "relu": _arrays((3, 4)),
    "sigmoid": _arrays((3, 4)),
    "tanh": _arrays((3, 4)),
    "softmax": _arrays((3, 5)),
    "log_softmax": _arrays((3, 5)),
    "softmax_cross_entropy": lambda rng, dt: ([_a(rng, dt, 3, 5)], {"y": np.array([0, 4, 2])}),
    # targets and masks as float64 on purpose: a float32 op must not be upcast by its params
    "mse": lambda rng, dt: ([_a(rng, dt, 2, 3)], {"y": _a(rng, np.float64, 2, 3)}),
    "svm_hinge": lambda rng, dt: ([_a(rng, dt, 3, 5)], {"y": np.array([1, 0, 4])}),
    "l2_regularization": lambda rng, dt: ([_a(rng, dt, 3, 2)], {"reg": np.float64(0.3)}),
    "dropout": lambda rng, dt: (
        [_a(rng, dt, 3, 4)], {"p": 0.6, "mode": "train", "mask": (rng.random((3, 4)) < 0.6).astype(np.float64)}),
    # out (2, 4, 4, 3) from a 2x3 kernel; the pools' windows overlap (stride 1 < window), out (2, 3, 6, 4)
    "conv2d": lambda rng, dt: ([_a(rng, dt, 2, 3, 7, 6), _a(rng, dt, 4, 3, 2, 3), _a(rng, dt, 4)],
                               {"stride": 2, "pad": 1}),
    "max_pool2d": lambda rng, dt: (
        [_a(rng, dt, 2, 3, 7, 6)], {"pool_height": 2, "pool_width": 3, "stride": 1}),
    "avg_pool2d": lambda rng, dt: (
        [_a(rng, dt, 2, 3, 7, 6)], {"pool_height": 2, "pool_width": 3, "stride": 1}),
    "rnn_step": _arrays((2, 3), (2, 4), (3, 4), (4, 4), (4,)),
    "rnn": _arrays((2, 3, 5), (2, 4), (5, 4), (4, 4), (4,)),
    "rnn_softmax_sequence": lambda rng, dt: (
        [_a(rng, dt, *s) for s in [(2, 3, 5), (2, 4), (5, 4), (4, 4), (4,), (4, 6), (6,)]],
        {"y": rng.integers(0, 6, (2, 3))}),
    "lstm_step": _arrays((2, 3), (2, 4), (2, 4), (3, 16), (4, 16), (16,)),
    "lstm": _arrays((2, 3, 5), (2, 4), (5, 16), (4, 16), (16,)),
    "batchnorm": lambda rng, dt: ([_a(rng, dt, 4, 3), _a(rng, dt, 3), _a(rng, dt, 3)], {"eps": 1e-5}),
    "layernorm": lambda rng, dt: ([_a(rng, dt, 4, 3), _a(rng, dt, 3), _a(rng, dt, 3)], {"eps": 1e-5}),
    "spatial_batchnorm": lambda rng, dt: ([_a(rng, dt, 2, 3, 4, 2), _a(rng, dt, 3), _a(rng, dt, 3)], {"eps": 1e-5}),
    "spatial_groupnorm": lambda rng, dt: (
        [_a(rng, dt, 2, 6, 3, 2), _a(rng, dt, 1, 6, 1, 1), _a(rng, dt, 1, 6, 1, 1)], {"G": 3, "eps": 1e-5}),
    # running statistics as float64 params on purpose (as y of mse): a float32 op stays float32
    "batchnorm_running": lambda rng, dt: (
        [_a(rng, dt, 4, 3), _a(rng, dt, 3), _a(rng, dt, 3)],
        {"running_mean": _a(rng, np.float64, 3), "running_var": _a(rng, np.float64, 3) ** 2,
         "momentum": 0.9, "eps": 1e-5}),
    "embedding": lambda rng, dt: ([_a(rng, dt, 5, 3)], {"idx": np.array([[0, 2, 0, 4], [2, 2, 1, 0]])}),
    "temporal_affine": _arrays((2, 3, 4), (4, 5), (5,)),
    "temporal_softmax_loss": lambda rng, dt: (
        [_a(rng, dt, 2, 3, 4)],
        {"y": rng.integers(0, 4, (2, 3)), "mask": np.array([[True, True, False], [True, False, False]])}),
    "mlp_sigmoid_mse": lambda rng, dt: ([_a(rng, dt, *s) for s in [(3, 4), (4, 5), (5,), (5, 2), (2,)]],
                                        {"y": rng.random((3, 2))}),
    "two_layer_net": lambda rng, dt: ([_a(rng, dt, *s) for s in [(3, 4), (4, 5), (5,), (5, 2), (2,)]],
                                      {"y": np.array([1, 0, 1]), "reg": 0.1}),
    # X as float64 on purpose, like mse's y: a float32 W must not be upcast by its data
    "linear_svm": lambda rng, dt: ([_a(rng, dt, 4, 3)], {"X": _a(rng, np.float64, 5, 4), "y": np.array([0, 2, 1, 1, 0]),
                                                        "reg": 0.25, "reg_scale": 0.5}),
    "linear_softmax": lambda rng, dt: ([_a(rng, dt, 4, 3)], {"X": _a(rng, np.float64, 5, 4),
                                                            "y": np.array([0, 2, 1, 1, 0]), "reg": 0.25}),
}


def _tuple(v):
    return v if isinstance(v, tuple) else (v,)


def _run(op, arrays, params, douts=None, rng=None):
    out, cache = getattr(R, op + "_forward")(*arrays, **params)
    outs = _tuple(out)
    if douts is None:
        douts = tuple(np.asarray(rng.standard_normal(o.shape), dtype=o.dtype) for o in outs)
    grads = _tuple(getattr(R, op + "_backward")(*douts, cache))
    return outs, douts, grads, cache


def test_every_contract_op_has_a_case():
    table = pathlib.Path(__file__).resolve().parents[1] / "docs" / "op_contract.md"
    contract_ops = {line.split("`")[1] for line in table.read_text().splitlines()
                    if line.startswith("| `")}
    assert contract_ops == set(CASES)
    for op in contract_ops:
        assert callable(getattr(R, op + "_forward")) and callable(getattr(R, op + "_backward"))


def test_reference_impl_imports_numpy_only():
    pkg = pathlib.Path(R.__file__).parent
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"<relative>"} if node.level else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= {"numpy", "<relative>"}, f"{path.name} imports {roots}"


# ---------------------------------------------------------------- purity and dtypes, every op

def _freeze(obj):
    """Make every array reachable in a cache read-only, so an in-place write raises."""
    if isinstance(obj, np.ndarray):
        obj.flags.writeable = False
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _freeze(item)


@pytest.mark.parametrize("op", sorted(CASES))
def test_no_mutation(op):
    rng = np.random.default_rng(1)
    arrays, params = CASES[op](rng, np.float64)
    frozen = [a.copy() for a in arrays] + [v.copy() for v in params.values() if isinstance(v, np.ndarray)]
    for a in arrays + [v for v in params.values() if isinstance(v, np.ndarray)]:
        a.flags.writeable = False  # an in-place write to an input or a param raises here
    out, cache = getattr(R, op + "_forward")(*arrays, **params)
    for o in _tuple(out):
        assert not any(np.shares_memory(o, a) for a in arrays), f"{op}: the output aliases an input"
    douts = tuple(rng.standard_normal(o.shape) for o in _tuple(out))
    douts_copy = [d.copy() for d in douts]
    for d in douts:
        d.flags.writeable = False
    _freeze(cache)  # the backward may be called twice on one cache: it must not write into it
    first = _tuple(getattr(R, op + "_backward")(*douts, cache))
    second = _tuple(getattr(R, op + "_backward")(*douts, cache))
    after = list(arrays) + [v for v in params.values() if isinstance(v, np.ndarray)]
    for before, now in zip(frozen, after):
        np.testing.assert_array_equal(before, now)
    for before, now in zip(douts_copy, douts):
        np.testing.assert_array_equal(before, now)
    for g1, g2 in zip(first, second):
        np.testing.assert_array_equal(g1, g2)
        assert not any(np.shares_memory(g1, d) for d in douts), f"{op}: a gradient aliases dout"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", sorted(CASES))
def test_dtype_and_shape_preserved(op, dtype):
    rng = np.random.default_rng(2)
    arrays, params = CASES[op](rng, dtype)
    outs, _, grads, _ = _run(op, arrays, params, rng=rng)
    assert all(o.dtype == dtype for o in outs), f"{op}: out dtypes {[o.dtype for o in outs]}"
    assert len(grads) == len(arrays), f"{op}: {len(grads)} gradients for {len(arrays)} arrays"
    for i, (a, g) in enumerate(zip(arrays, grads)):
        assert g.shape == a.shape, f"{op}: grad[{i}] shape {g.shape}, input {a.shape}"
        assert g.dtype == dtype, f"{op}: grad[{i}] dtype {g.dtype} for {np.dtype(dtype)} input"


# ---------------------------------------------------------------- worked examples of the notes

def _s(v):
    return np.asarray(v, dtype=np.float64)


def test_circuit_x_plus_y_times_z():
    # seed 002 §3 (the cs231n circuit): x, y, z = -2, 5, -4 -> q = x + y = 3, f = q·z = -12;
    # df/dx = df/dy = z = -4, df/dz = q = 3
    f, cache = R.chain_rule_example_forward(_s(-2), _s(5), _s(-4))
    assert f == -12
    assert tuple(R.chain_rule_example_backward(_s(1), cache)) == (-4, -4, 3)


def test_gate_patterns_in_backward_flow():
    # seed 004 "Patterns in backward flow" on the cs231n example f = 2·(x·y + max(z, w)),
    # x, y, z, w = 3, -4, 2, -1: the forward is -20; backward with df/df = 1:
    xy, c_mul = R.multiply_gate_forward(_s(3), _s(-4))
    m, c_max = R.max_gate_forward(_s(2), _s(-1))
    s, c_add = R.add_gate_forward(xy, m)
    f, c_out = R.multiply_gate_forward(s, _s(2))
    assert f == -20
    ds, _ = R.multiply_gate_backward(_s(1), c_out)
    assert ds == 2
    dxy, dm = R.add_gate_backward(ds, c_add)  # add: the same gradient to both branches
    assert dxy == 2 and dm == 2
    dz, dw = R.max_gate_backward(dm, c_max)  # max: all to the larger input, 0 to the other
    assert dz == 2 and dw == 0
    dx, dy = R.multiply_gate_backward(dxy, c_mul)  # multiply: switched, each gets the other's value
    assert dx == -8 and dy == 6


def test_sigmoid_gate_local_gradient():
    # seed 004: dσ/dx = (1 - σ(x))·σ(x); at x = 1 (the neuron's dot product below) σ = 0.73, σ' = 0.20
    out, cache = R.sigmoid_forward(_s([0.0, 1.0]))
    np.testing.assert_allclose(out, [0.5, 1 / (1 + np.exp(-1))])
    np.testing.assert_allclose(R.sigmoid_backward(_s([1.0, 1.0]), cache), out * (1 - out))
    assert round(float(out[1]), 2) == 0.73 and round(float((1 - out[1]) * out[1]), 2) == 0.20


def test_sigmoid_neuron_worked_example():
    # seed 002 §6 (cs231n): w = [2, -3, -3], x = [-1, -2] -> w0x0 + w1x1 + w2 = 1, f = 0.73;
    # dw = [-0.2, -0.39, 0.2], dx = [0.39, -0.59]
    f, cache = R.sigmoid_neuron_forward(_s([2, -3, -3]), _s([[-1, -2]]))
    np.testing.assert_allclose(f, [0.73], atol=5e-3)
    dw, dx = R.sigmoid_neuron_backward(_s([1.0]), cache)
    np.testing.assert_allclose(dw, [-0.2, -0.39, 0.2], atol=1e-2)
    np.testing.assert_allclose(dx, [[0.39, -0.59]], atol=1e-2)


# ---------------------------------------------------------------- kinks and ties

def test_max_gate_tie_splits_evenly():
    x, y, d = _s([1.0, 2.0, 3.0]), _s([1.0, 0.0, 5.0]), _s([2.0, 4.0, 6.0])
    _, cache = R.max_gate_forward(x, y)
    dx, dy = R.max_gate_backward(d, cache)
    np.testing.assert_array_equal(dx, [1.0, 4.0, 0.0])
    np.testing.assert_array_equal(dy, [1.0, 0.0, 6.0])


def test_max_pool2d_tie_gives_the_window_to_its_first_max():
    # a constant window: the whole upstream gradient goes to ONE element, the first in row-major order
    x = np.full((1, 1, 2, 4), 7.0)
    _, cache = R.max_pool2d_forward(x, pool_height=2, pool_width=2, stride=2)
    dx = R.max_pool2d_backward(_s([[[[3.0, 5.0]]]]), cache)
    np.testing.assert_array_equal(dx[0, 0], [[3, 0, 5, 0], [0, 0, 0, 0]])


def test_max_pool2d_ties_with_overlapping_windows():
    # stride 1 on a constant 3x3: window (i, j) credits its top-left element (i, j); credit sums to dout
    x = np.zeros((1, 1, 3, 3))
    d = _s([[[[1.0, 2.0], [3.0, 4.0]]]])
    _, cache = R.max_pool2d_forward(x, pool_height=2, pool_width=2, stride=1)
    dx = R.max_pool2d_backward(d, cache)
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    # a partial tie: the row-major first of the tied maxima wins, not the later one
    x = _s([[[[1.0, 5.0, 2.0], [5.0, 0.0, 5.0]]]])
    _, cache = R.max_pool2d_forward(x, pool_height=2, pool_width=3, stride=1)
    np.testing.assert_array_equal(R.max_pool2d_backward(_s([[[[1.0]]]]), cache)[0, 0], [[0, 1, 0], [0, 0, 0]])


def test_relu_and_hinge_at_the_kink_take_zero():
    _, cache = R.relu_forward(_s([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(R.relu_backward(_s([1.0, 1.0, 1.0]), cache), [0, 0, 1])
    # class 0's margin x0 - x2 + 1 is exactly 0 (inactive); class 3's is 0.5 (active)
    loss, cache = R.svm_hinge_forward(_s([[1.0, 0.0, 2.0, 1.5]]), y=np.array([2]))
    assert loss == 0.5
    np.testing.assert_array_equal(R.svm_hinge_backward(_s(1.0), cache), [[0, 0, -1, 1]])


def test_dropout_replays_the_mask_and_test_mode_is_identity():
    x, mask, d = _s([[1.0, -2.0, 3.0]]), _s([[1.0, 0.0, 1.0]]), _s([[4.0, 5.0, 6.0]])
    out, cache = R.dropout_forward(x, p=0.5, mode="train", mask=mask)
    np.testing.assert_array_equal(out, [[2.0, 0.0, 6.0]])
    np.testing.assert_array_equal(R.dropout_backward(d, cache), [[8.0, 0.0, 12.0]])
    out, cache = R.dropout_forward(x, p=0.5, mode="test", mask=mask)
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(R.dropout_backward(d, cache), d)


def test_embedding_accumulates_repeated_indices():
    w = np.zeros((3, 2))
    _, cache = R.embedding_forward(w, idx=np.array([[0, 0, 2]]))
    dw = R.embedding_backward(_s([[[1.0, 2.0], [10.0, 20.0], [5.0, 6.0]]]), cache)
    np.testing.assert_array_equal(dw, [[11, 22], [0, 0], [5, 6]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_finite_for_huge_logits(dtype):
    x = np.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 3e3]], dtype=dtype)
    y = np.array([1, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for op in ["softmax_cross_entropy", "svm_hinge"]:
            loss, cache = getattr(R, op + "_forward")(x, y=y)
            dx = getattr(R, op + "_backward")(np.asarray(1.0, dtype=dtype), cache)
            assert np.isfinite(loss) and np.isfinite(dx).all(), op
        s, cache = R.sigmoid_forward(np.asarray([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=dtype))
        assert np.isfinite(R.sigmoid_backward(np.ones_like(s), cache)).all()
        np.testing.assert_array_equal(s[[0, 2, 4]], [0.0, 0.5, 1.0])
