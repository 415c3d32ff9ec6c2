"""The framework forwards (oracles/torch_ops.py, oracles/jax_ops.py) agree with each other.

Every op of docs/op_contract.md, float64, on fixed small non-square inputs (D != M, H != W, kernel
height != width, stride below and above the window, pad 0 and > 0, N = 1, T = 1, repeated
indices): forwards equal, and VJPs equal for a random (not all-ones) upstream gradient. Two
independent framework implementations of one formula: if they disagree, one of them is not the
op in the contract (a gate order, a missing 1/N, a wrong axis). The JAX side is jit-compiled with
its non-array params static, as the JAX oracle does.

The last tests pin the conventions both frameworks share at kinks and ties (CONVENTIONS rows 1,
2, 7, 24), which the catalogue's `kinks` rely on: if a framework release changes one, it shows here.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: torch forwards not checked")
jax = pytest.importorskip("jax", reason="jax is not installed: jax forwards not checked")

from oracles import jax_ops, torch_ops  # noqa: E402

CONTRACT = Path(__file__).resolve().parents[1] / "docs" / "op_contract.md"

# Two float64 implementations of the same formula on O(1) inputs of at most ~100 elements differ
# by a few ulps (observed <= 2e-15); any formula error is O(1e-2) or more. 1e-10 sits between.
RTOL, ATOL = 1e-10, 1e-12


def contract_ops() -> list[str]:
    return re.findall(r"^\| `(\w+)` \|", CONTRACT.read_text(encoding="utf-8"), flags=re.M)


def _cases() -> dict[str, list[tuple[tuple[np.ndarray, ...], dict]]]:
    """op -> [(arrays, params)]; arrays float64, params Python scalars or integer/bool/float arrays."""
    rng = np.random.default_rng(20240607)
    r = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    labels = lambda hi, *shape: rng.integers(0, hi, size=shape)  # noqa: E731
    N, D, H, T, C = 3, 4, 5, 6, 7
    S = (3, 5)
    c: dict = {}
    c["add_gate"] = [((r(*S), r(*S)), {}), ((r(), r()), {})]  # 0-d: the scalar gates of the notes
    c["multiply_gate"] = [((r(*S), r(*S)), {})]
    c["max_gate"] = [((r(*S), r(*S)), {})]
    c["sigmoid_neuron"] = [((r(3), r(4, 2)), {})]
    c["chain_rule_example"] = [((r(*S), r(*S), r(*S)), {})]
    c["affine"] = [((r(2, 3, 4), r(12, 5), r(5)), {}), ((r(1, 7), r(7, 3), r(3)), {})]
    c["linear_column"] = [((r(5, 3), r(3, 4), r(5, 1)), {}), ((r(2, 6), r(6, 1), r(2, 1)), {})]
    c["temporal_affine"] = [((r(2, 3, 4), r(4, 5), r(5)), {}), ((r(1, 1, 3), r(3, 2), r(2)), {})]
    for op in ("relu", "sigmoid", "tanh"):
        c[op] = [((r(2, 3, 4) * 5,), {})]  # 3-d, partly saturated
    for op in ("softmax", "log_softmax"):
        c[op] = [((r(3, 5),), {}), ((r(1, 4) * 100,), {})]
    c["softmax_cross_entropy"] = [((r(4, 5),), {"y": labels(5, 4)}), ((r(1, 3),), {"y": labels(3, 1)})]
    c["mse"] = [((r(3, 4),), {"y": r(3, 4)})]
    c["svm_hinge"] = [((r(4, 5),), {"y": labels(5, 4)}), ((r(1, 3),), {"y": labels(3, 1)})]
    c["l2_regularization"] = [((r(3, 4),), {"reg": 0.37})]
    mask = (rng.random((3, 4)) < 0.6).astype(np.float64)
    c["dropout"] = [((r(3, 4),), {"p": 0.6, "mode": "train", "mask": mask}),
                    ((r(3, 4),), {"p": 0.6, "mode": "test", "mask": mask})]
    c["conv2d"] = [((r(2, 3, 7, 6), r(4, 3, 3, 2), r(4)), {"stride": 2, "pad": 1}),
                   ((r(1, 2, 5, 8), r(3, 2, 2, 3), r(3)), {"stride": 1, "pad": 0}),
                   ((r(2, 1, 9, 7), r(2, 1, 2, 3), r(2)), {"stride": 3, "pad": 2})]
    c["max_pool2d"] = [((r(2, 3, 7, 6),), {"pool_height": 3, "pool_width": 2, "stride": 1}),
                       ((r(1, 2, 8, 9),), {"pool_height": 2, "pool_width": 3, "stride": 3})]
    c["avg_pool2d"] = [((r(2, 3, 7, 6),), {"pool_height": 3, "pool_width": 2, "stride": 1}),
                       ((r(1, 2, 8, 9),), {"pool_height": 2, "pool_width": 3, "stride": 4})]
    c["rnn_step"] = [((r(N, D), r(N, H), r(D, H), r(H, H), r(H)), {})]
    c["rnn"] = [((r(N, T, D), r(N, H), r(D, H) / 2, r(H, H) / 2, r(H)), {}),
                ((r(1, 1, D), r(1, H), r(D, H), r(H, H), r(H)), {})]
    c["rnn_softmax_sequence"] = [
        ((r(N, T, D), r(N, H), r(D, H) / 2, r(H, H) / 2, r(H), r(H, C), r(C)), {"y": labels(C, N, T)})]
    c["lstm_step"] = [((r(N, D), r(N, H), r(N, H), r(D, 4 * H), r(H, 4 * H), r(4 * H)), {})]
    c["lstm"] = [((r(N, T, D), r(N, H), r(D, 4 * H) / 2, r(H, 4 * H) / 2, r(4 * H)), {}),
                 ((r(1, 1, D), r(1, H), r(D, 4 * H), r(H, 4 * H), r(4 * H)), {})]
    c["batchnorm"] = [((r(4, 3) * 3 + 1, r(3), r(3)), {"eps": 1e-5}), ((r(2, 5), r(5), r(5)), {"eps": 1e-3})]
    c["layernorm"] = [((r(4, 3) * 3 + 1, r(3), r(3)), {"eps": 1e-5}), ((r(1, 5), r(5), r(5)), {"eps": 1e-3})]
    c["spatial_batchnorm"] = [((r(2, 3, 4, 2) * 3 + 1, r(3), r(3)), {"eps": 1e-5}),
                              ((r(1, 2, 2, 3), r(2), r(2)), {"eps": 1e-3})]
    c["spatial_groupnorm"] = [((r(2, 6, 3, 2) * 3 + 1, r(1, 6, 1, 1), r(1, 6, 1, 1)), {"G": 3, "eps": 1e-5}),
                              ((r(1, 4, 2, 3), r(1, 4, 1, 1), r(1, 4, 1, 1)), {"G": 1, "eps": 1e-5}),
                              ((r(2, 3, 1, 2), r(1, 3, 1, 1), r(1, 3, 1, 1)), {"G": 3, "eps": 1e-3})]
    c["batchnorm_running"] = [((r(4, 3) * 3 + 1, r(3), r(3)),
                               {"running_mean": r(3), "running_var": r(3) ** 2, "momentum": np.asarray(0.9),
                                "eps": 1e-5}),
                              ((r(1, 5), r(5), r(5)), {"running_mean": r(5), "running_var": np.zeros(5),
                                                       "momentum": np.asarray(0.0), "eps": 1e-3})]
    c["embedding"] = [((r(7, 3),), {"idx": np.array([[0, 2, 2, 6], [6, 6, 1, 0]])}),
                      ((r(4, 5),), {"idx": np.array([[3]])})]
    c["temporal_softmax_loss"] = [
        ((r(2, 3, 5),), {"y": labels(5, 2, 3), "mask": np.array([[1, 0, 1], [1, 1, 0]], bool)}),
        ((r(1, 1, 4),), {"y": labels(4, 1, 1), "mask": np.ones((1, 1), bool)})]
    c["mlp_sigmoid_mse"] = [((r(4, 3), r(3, 5), r(5), r(5, 2), r(2)), {"y": r(4, 2)})]
    c["two_layer_net"] = [((r(4, 3), r(3, 5), r(5), r(5, 6), r(6)), {"y": labels(6, 4), "reg": 0.1}),
                          ((r(1, 3), r(3, 5), r(5), r(5, 6), r(6)), {"y": labels(6, 1), "reg": 0.0})]
    for op in ("linear_svm", "linear_softmax"):
        c[op] = [((r(3, 5),), {"X": r(4, 3), "y": labels(5, 4), "reg": 0.3, "reg_scale": 0.5}),
                 ((r(2, 3),), {"X": r(1, 2), "y": labels(3, 1), "reg": 0.0, "reg_scale": 1.0})]
    return c


CASES = _cases()


@pytest.fixture(scope="module", autouse=True)
def _jax_config():
    """float64 must be float64 on the JAX side. XLA's optimisation passes are switched off: they
    cost 2-3x the compile time of conv/scan/reduce_window here (the budget of this file is
    compiles), and these tests check formulas, not fusions. Both settings are restored after."""
    settings = {"jax_enable_x64": True, "jax_disable_most_optimizations": True}
    before = {k: jax.config.values[k] for k in settings}
    for k, v in settings.items():
        jax.config.update(k, v)
    yield
    for k, v in before.items():
        jax.config.update(k, v)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def run_torch(op, arrays, params, douts=None):
    xs = [torch.tensor(a, requires_grad=True) for a in arrays]
    kw = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in params.items()}
    outs = _as_tuple(getattr(torch_ops, op)(*xs, **kw))
    if douts is None:
        return tuple(o.detach().numpy() for o in outs), None
    grads = torch.autograd.grad(outs, xs, [torch.as_tensor(d) for d in douts], allow_unused=True)
    grads = tuple(np.zeros_like(a) if g is None else g.numpy() for a, g in zip(arrays, grads))
    return tuple(o.detach().numpy() for o in outs), grads


def run_jax(op, arrays, params, douts=None):
    static = {k: v for k, v in params.items() if not isinstance(v, np.ndarray)}
    # device_put, not jnp.asarray: the latter compiles a small program per shape.
    dynamic = {k: jax.device_put(v) for k, v in params.items() if isinstance(v, np.ndarray)}
    fn = getattr(jax_ops, op)

    @jax.jit
    def forward_and_vjp(xs, dyn, ds):
        out, pullback = jax.vjp(lambda *a: fn(*a, **dyn, **static), *xs)
        return out, (pullback(ds if isinstance(out, tuple) else ds[0]) if ds is not None else None)

    xs = tuple(jax.device_put(a) for a in arrays)
    ds = None if douts is None else tuple(jax.device_put(d) for d in douts)
    out, grads = forward_and_vjp(xs, dynamic, ds)
    outs = tuple(np.asarray(o) for o in _as_tuple(out))
    return outs, None if grads is None else tuple(np.asarray(g) for g in grads)


def test_every_contract_op_has_forwards_and_a_case():
    ops = contract_ops()
    assert len(ops) >= 30, f"parsed only {len(ops)} ops from {CONTRACT}: did the table format change?"
    missing = [op for op in ops
               if not (callable(getattr(torch_ops, op, None)) and callable(getattr(jax_ops, op, None)))]
    assert not missing, f"contract ops without a torch or jax forward: {missing}"
    assert sorted(CASES) == sorted(ops), (
        f"cases here vs contract: missing {sorted(set(ops) - set(CASES))}, "
        f"extra {sorted(set(CASES) - set(ops))}")


def _check(phase, op, k, torch_arrays, jax_arrays, shapes):
    assert len(torch_arrays) == len(jax_arrays), f"{op} case {k} {phase}: count differs"
    for i, (t, j) in enumerate(zip(torch_arrays, jax_arrays)):
        where = f"{op} case {k} {phase}[{i}]"
        assert t.shape == j.shape, f"{where}: torch shape {t.shape} vs jax {j.shape}"
        if shapes is not None:
            assert t.shape == shapes[i], f"{where}: shape {t.shape}, input's is {shapes[i]}"
        assert t.dtype == j.dtype == np.float64, f"{where}: dtypes torch {t.dtype}, jax {j.dtype}"
        np.testing.assert_allclose(t, j, rtol=RTOL, atol=ATOL, err_msg=f"{where}: torch vs jax")


@pytest.mark.parametrize("op", contract_ops())
def test_torch_and_jax_forwards_and_vjps_agree(op):
    if op not in CASES:
        pytest.fail(f"{op} is in {CONTRACT.name} but has no case in this file: add one to _cases()")
    rng = np.random.default_rng(7)
    for k, (arrays, params) in enumerate(CASES[op]):
        t_out, _ = run_torch(op, arrays, params)
        douts = tuple(rng.standard_normal(o.shape) for o in t_out)  # random, not all ones
        t_out, t_grads = run_torch(op, arrays, params, douts)
        j_out, j_grads = run_jax(op, arrays, params, douts)
        _check("forward", op, k, t_out, j_out, None)
        _check("grad", op, k, t_grads, j_grads, [a.shape for a in arrays])


def test_float32_in_float32_out():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((2, 3, 3, 2)).astype(np.float32)
    b = np.zeros(2, np.float32)
    t_out, _ = run_torch("conv2d", (x, w, b), {"stride": 1, "pad": 1})
    j_out, _ = run_jax("conv2d", (x, w, b), {"stride": 1, "pad": 1})
    assert t_out[0].dtype == j_out[0].dtype == np.float32
    y = np.zeros((2, 3, 5, 4))  # float64 target must not promote a float32 loss
    t_out, _ = run_torch("mse", (x,), {"y": y})
    j_out, _ = run_jax("mse", (x,), {"y": y})
    assert t_out[0].dtype == j_out[0].dtype == np.float32


# --- conventions at kinks and ties, shared by both frameworks --------------------------------

def _grads_both(op, arrays, params, douts=None):
    if douts is None:
        douts = tuple(np.ones_like(o) for o in run_torch(op, arrays, params)[0])
    return run_torch(op, arrays, params, douts)[1], run_jax(op, arrays, params, douts)[1]


def test_relu_gradient_is_zero_at_zero():  # CONVENTIONS row 1
    for grads in _grads_both("relu", (np.array([-1.0, 0.0, 2.0]),), {}):
        np.testing.assert_array_equal(grads[0], [0.0, 0.0, 1.0])


def test_max_gate_splits_a_tie_in_half():  # CONVENTIONS row 2
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0])
    for gx, gy in _grads_both("max_gate", (x, y), {}):
        np.testing.assert_array_equal(gx, [0.5, 0.0, 1.0])
        np.testing.assert_array_equal(gy, [0.5, 1.0, 0.0])


def test_max_pool_tie_goes_to_first_element_of_each_window():  # CONVENTIONS row 7
    x = np.zeros((1, 1, 3, 4))  # all tied; 2x3 windows, stride 1: four overlapping windows
    expected = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    for grads in _grads_both("max_pool2d", (x,), {"pool_height": 2, "pool_width": 3, "stride": 1}):
        np.testing.assert_array_equal(grads[0][0, 0], expected)


def test_svm_hinge_gradient_is_zero_at_the_hinge():  # CONVENTIONS row 24; hinge at exactly 0
    x = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # row 0: margin of class 1 is exactly 0
    y = np.array([0, 2])
    for grads in _grads_both("svm_hinge", (x,), {"y": y}):
        np.testing.assert_array_equal(grads[0], [[0.0, 0.0, 0.0], [0.5, 0.5, -1.0]])
