"""Mutation score: the operators (gradaudit/mutants.py), the judging of mutants (gradaudit/mutate.py,
gradaudit/_mutant_worker.py, mutant_probe.py), the command, and the honesty check: the catalogue's score in the ci
profile must not drop below the recorded one."""
import ast
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gradaudit import mutate
from gradaudit.mutants import OPERATORS, Mutant, backward_helpers, generate

ROOT = Path(__file__).resolve().parents[1]


def _load(source: str, name: str = "m"):
    ns: dict = {"__name__": name}
    exec(compile(source, f"<{name}>", "exec"), ns)
    return ns


def _mutants(source, fn, op, **kw):
    return generate(textwrap.dedent(source), [fn], operators=[op], **kw)


def _only(mutants, needle):
    """The one mutant whose changed line contains `needle`."""
    found = [m for m in mutants if any(line.startswith("+") and needle in line for line in m.diff.splitlines()[2:])]
    assert len(found) == 1, f"expected one mutant with {needle!r}, got {[m.description for m in mutants]}"
    return found[0]


def _grads(source, fn, *args):
    out = _load(source)[fn](*[np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args])
    return out if isinstance(out, tuple) else (out,)


def _changes_gradient(m: Mutant, original: str, fn: str, *args):
    g0, g1 = _grads(textwrap.dedent(original), fn, *args), _grads(m.source, fn, *args)
    assert len(g0) == len(g1)
    assert any(np.shape(a) != np.shape(b) or not np.allclose(a, b) for a, b in zip(g0, g1)), m.description


RNG = np.random.default_rng(0)


# ---- each operator: the intended mutant, and a gradient it changes ------------------------------

SOFTMAX_LOSS = """
import numpy as np

def softmax_loss(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = x.shape[0]
    loss = -log_probs[np.arange(n), y].sum() / n
    dx = np.exp(log_probs)
    dx[np.arange(n), y] -= 1
    dx /= n
    return loss, dx
"""


def test_one_over_n_drops_and_doubles_the_batch_mean():
    ms = _mutants(SOFTMAX_LOSS, "softmax_loss", "one_over_n", losses={"softmax_loss"})
    x, y = RNG.standard_normal((4, 5)), np.array([0, 2, 1, 4])
    dropped = _only(ms, "pass")  # `dx /= n` removed
    twice = _only(ms, "dx /= n * n")
    for m in (dropped, twice):
        _changes_gradient(m, SOFTMAX_LOSS, "softmax_loss", x, y)
    assert "1/n dropped" in dropped.description and "applied twice" in twice.description


def test_sign_flips_the_correct_class_term():
    m = _only(_mutants(SOFTMAX_LOSS, "softmax_loss", "sign", losses={"softmax_loss"}), "dx[np.arange(n), y] += 1")
    _changes_gradient(m, SOFTMAX_LOSS, "softmax_loss", RNG.standard_normal((3, 4)), np.array([1, 0, 3]))


AFFINE = """
import numpy as np

def affine_backward(dout, cache):
    x, w, b = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db
"""


def test_transpose_removed_on_a_square_weight_changes_dx():
    m = _only(_mutants(AFFINE, "affine_backward", "transpose"), "dx = (dout @ w).reshape")
    x, w = RNG.standard_normal((2, 3)), RNG.standard_normal((3, 3))  # square: it type-checks by luck
    _changes_gradient(m, AFFINE, "affine_backward", RNG.standard_normal((2, 3)), (x, w, np.zeros(3)))


def test_axis_wrong_and_reduction_forgotten():
    ms = _mutants(AFFINE, "affine_backward", "axis")
    wrong = _only(ms, "db = dout.sum(axis=1)")
    (forgot,) = [m for m in ms if "+    db = dout" in m.diff.splitlines()]
    x, w = RNG.standard_normal((3, 2)), RNG.standard_normal((2, 3))
    _changes_gradient(wrong, AFFINE, "affine_backward", RNG.standard_normal((3, 3)), (x, w, np.zeros(3)))
    _changes_gradient(forgot, AFFINE, "affine_backward", RNG.standard_normal((3, 3)), (x, w, np.zeros(3)))


BATCHED_AFFINE = """
def affine_backward(dout, cache):
    x, w = cache
    dx = (dout @ w.mT).reshape(x.shape)
    dw = x.reshape(*dout.shape[:-1], -1).mT @ dout
    db = dout.sum(axis=-2)
    return dx, dw, db
"""


def test_negative_axes_and_matrix_transposes_are_mutated_too():
    """`axis=-2` and NumPy 2's `.mT` (a stack of matrices), as the batched references and some students
    write them: the same mutants as `axis=0` and `.T`."""
    wrong = _only(_mutants(BATCHED_AFFINE, "affine_backward", "axis"), "db = dout.sum(axis=-1)")
    dropped = _only(_mutants(BATCHED_AFFINE, "affine_backward", "transpose"), "dx = (dout @ w).reshape")
    x, w = RNG.standard_normal((3, 2)), RNG.standard_normal((2, 2))  # square w: dropping .mT type-checks
    _changes_gradient(wrong, BATCHED_AFFINE, "affine_backward", RNG.standard_normal((3, 2)), (x, w))
    _changes_gradient(dropped, BATCHED_AFFINE, "affine_backward", RNG.standard_normal((3, 2)), (x, w))


SOFTMAX_BACKWARD = """
def softmax_backward(dout, cache):
    s = cache
    return s * (dout - (dout * s).sum(axis=1, keepdims=True))
"""


def test_keepdims_lost_broadcasts_along_the_wrong_axis():
    m = _only(_mutants(SOFTMAX_BACKWARD, "softmax_backward", "keepdims"), "(dout * s).sum(axis=1))")
    s = np.exp(RNG.standard_normal((3, 3)))
    s /= s.sum(axis=1, keepdims=True)
    _changes_gradient(m, SOFTMAX_BACKWARD, "softmax_backward", RNG.standard_normal((3, 3)), s)


RNN = """
import numpy as np

def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)

def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h ** 2)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)

def rnn_backward(dh, cache):
    caches = cache
    n, t_len, _ = dh.shape
    dx = np.zeros((n, t_len, caches[0][0].shape[1]))
    dWx, dWh = np.zeros_like(caches[0][2]), np.zeros_like(caches[0][3])
    db = np.zeros(dh.shape[2])
    dprev_h = np.zeros_like(dh[:, 0, :])
    for t in reversed(range(t_len)):
        dx[:, t, :], dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t, :] + dprev_h, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db
"""


def _rnn_case(T=3, N=2, D=3, H=4):
    ns = _load(textwrap.dedent(RNN))
    x, h = RNG.standard_normal((N, T, D)), RNG.standard_normal((N, H))
    wx, wh, b = RNG.standard_normal((D, H)) * 0.5, RNG.standard_normal((H, H)) * 0.5, RNG.standard_normal(H)
    caches = []
    for t in range(T):
        h, c = ns["rnn_step_forward"](x[:, t, :], h, wx, wh, b)
        caches.append(c)
    return RNG.standard_normal((N, T, H)), caches


def test_off_by_one_start_stop_and_recurrent_index():
    ms = _mutants(RNN, "rnn_backward", "off_by_one")
    dh, caches = _rnn_case()
    for needle in ("reversed(range(1, t_len))", "reversed(range(t_len - 1))", "caches[t - 1]"):
        _changes_gradient(_only(ms, needle), RNN, "rnn_backward", dh, caches)


def test_accumulate_assigns_where_the_loop_must_add():
    m = _only(_mutants(RNN, "rnn_backward", "accumulate"), "dWx = dWx_t")
    dh, caches = _rnn_case()
    _changes_gradient(m, RNN, "rnn_backward", dh, caches)


def test_prev_state_and_stale_cache_in_the_step_backward():
    dh, caches = _rnn_case(T=1, D=4)
    prev = _only(_mutants(RNN, "rnn_step_backward", "prev_state"), "next_h.T @ da")
    _changes_gradient(prev, RNN, "rnn_step_backward", dh[:, 0], caches[0])
    stale = _only(_mutants(RNN, "rnn_step_backward", "stale_cache", forwards={"rnn_step_backward": "rnn_step_forward"}),
                  "next_h = np.tanh(next_h)")
    assert "np.tanh(x @ Wx + prev_h @ Wh + b)" in stale.description  # names what the forward computed
    _changes_gradient(stale, RNN, "rnn_step_backward", dh[:, 0], caches[0])


def test_dout_in_place_keeps_the_gradient_and_corrupts_dout():
    dh, caches = _rnn_case(T=1)
    m = _only(_mutants(RNN, "rnn_step_backward", "dout_in_place"), "out=dnext_h")
    dout = dh[:, 0].copy()
    g0 = _grads(textwrap.dedent(RNN), "rnn_step_backward", dout, caches[0])
    g1 = _load(m.source)["rnn_step_backward"](dout, caches[0])  # no private copy: as a caller would call it
    assert all(np.allclose(a, b) for a, b in zip(g0, g1))
    assert not np.allclose(dout, dh[:, 0]), "the mutant must write into dout"


POOL = """
import numpy as np

def max_pool_backward_naive(dout, cache):
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    n, c, h_out, w_out = dout.shape
    dx = np.zeros_like(x)
    for a in range(n):
        for ch in range(c):
            for i in range(h_out):
                for j in range(w_out):
                    window = x[a, ch, i * stride:i * stride + ph, j * stride:j * stride + pw]
                    u, v = np.unravel_index(np.argmax(window), window.shape)
                    dx[a, ch, i * stride + u, j * stride + v] += dout[a, ch, i, j]
    return dx
"""


def test_swap_hw_in_the_pool_window_and_the_param_keys():
    ms = _mutants(POOL, "max_pool_backward_naive", "swap_hw")
    # increasing values: every window's max is its bottom-right corner, so a window of the wrong height or
    # width routes the gradient elsewhere (a random x from the shared RNG can hide it, depending on test order)
    x = np.arange(24.0).reshape(1, 1, 4, 6)
    param = {"pool_height": 2, "pool_width": 3, "stride": 2}  # overlapping in W, ph != pw
    dout = RNG.standard_normal((1, 1, 2, 2))
    for needle in ("pw, ph, stride = ", "pool_param['pool_width'], pool_param[\"pool_width\"]", "i * stride + pw, j"):
        _changes_gradient(_only(ms, needle), POOL, "max_pool_backward_naive", dout, (x, param))


def test_accumulate_in_overlapping_windows():
    m = _only(_mutants(POOL, "max_pool_backward_naive", "accumulate"), "] = dout[a, ch, i, j]")
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5  # the max of all four overlapping 2x2 windows
    _changes_gradient(m, POOL, "max_pool_backward_naive", np.ones((1, 1, 2, 2)),
                      (x, {"pool_height": 2, "pool_width": 2, "stride": 1}))


RELU = """
def relu_backward(dout, cache):
    x = cache
    return dout * (x > 0)
"""


def test_kink_convention_changes_the_gradient_at_zero_only():
    m = _only(_mutants(RELU, "relu_backward", "kink"), "x >= 0")
    x = np.array([-1.0, 0.0, 2.0])
    _changes_gradient(m, RELU, "relu_backward", np.ones(3), x)
    g0, g1 = _grads(textwrap.dedent(RELU), "relu_backward", np.ones(3), x), _grads(m.source, "relu_backward",
                                                                                 np.ones(3), x)
    assert np.flatnonzero(g0[0] != g1[0]).tolist() == [1]


def test_np_add_at_becomes_a_fancy_index_add_that_drops_repeats():
    src = """
    import numpy as np

    def word_embedding_backward(dout, cache):
        x, shape = cache
        dW = np.zeros(shape)
        np.add.at(dW, x, dout)
        return dW
    """
    m = _only(_mutants(src, "word_embedding_backward", "accumulate"), "dW[x] += dout")
    idx = np.array([[0, 1, 0]])  # word 0 twice
    _changes_gradient(m, src, "word_embedding_backward", np.ones((1, 3, 2)), (idx, (3, 2)))


def test_every_operator_has_a_test_above():
    tested = {"one_over_n", "sign", "transpose", "axis", "keepdims", "off_by_one", "prev_state", "swap_hw",
              "accumulate", "stale_cache", "dout_in_place", "kink"}
    assert tested == set(OPERATORS)


# ---- what the generator leaves alone -----------------------------------------------------------

def test_a_mutant_changes_one_span_and_keeps_the_rest_of_the_file_byte_for_byte():
    src = textwrap.dedent('''\
        import numpy as np  # 中文注释: comments and non-ASCII text stay as written

        def relu_backward(dout, cache):
            x = cache  # 缓存
            return dout * (x > 0)  # ReLU 的梯度

        def untouched(a):
            return a - 1
        ''')
    ms = generate(src, ["relu_backward"])
    assert ms
    for m in ms:
        ast.parse(m.source)
        old, new = src.splitlines(), m.source.splitlines()
        changed = [k for k, (a, b) in enumerate(zip(old, new)) if a != b]
        assert len(old) == len(new) and len(changed) == 1, m.description
        assert "# ReLU 的梯度" in new[changed[0]]
        body = m.diff.splitlines()[2:]  # past the ---/+++ header
        assert sum(ln.startswith("-") for ln in body) == 1 and sum(ln.startswith("+") for ln in body) == 1


def test_sizes_and_indices_are_not_sign_flipped():
    src = """
    import numpy as np

    def f_backward(dout, cache):
        x, pad = cache
        n = x.shape[0] - 1
        dx = np.zeros((n + 1, 3))
        dx[1:n + 1] = dout[pad:pad + n] - x[1:]
        return dx
    """
    ms = _mutants(src, "f_backward", "sign")
    assert [m.description for m in ms] == ["`dout[pad:pad + n] - x[1:]` -> `dout[pad:pad + n] + x[1:]` "
                                           "(sign of `x[1:]` flipped)"]


def test_helpers_only_backwards_call_are_backward_code():
    src = textwrap.dedent("""
    def _norm(x):
        return x

    def _norm_backward(d):
        return d

    def bn_forward(x):
        return _norm(x), x

    def bn_backward(dout, cache):
        return _norm_backward(dout)
    """)
    assert backward_helpers(src, ["bn_backward"], ["bn_forward"]) == {"_norm_backward": ["bn_backward"]}


def test_unknown_operator_is_named():
    with pytest.raises(ValueError, match="unknown mutation operator.*nope.*known: one_over_n"):
        generate("def f(d, c):\n    return d\n", ["f"], operators=["nope"])


# ---- planning: who judges a mutant ------------------------------------------------------------

def test_a_step_backward_is_judged_by_the_sequence_that_calls_it_too():
    plan = mutate.plan_file(ROOT / "examples/cs231n/layers_correct.py", "cs231n", "rnn_step", None)
    assert plan.kind == "cs231n" and plan.mutants
    assert all(judges == ["rnn_step_backward", "rnn_backward"] for _, judges, _ in plan.mutants)


def test_derivation_backwards_are_found_without_running_the_file(tmp_path):
    f = tmp_path / "notes.py"
    f.write_text(textwrap.dedent("""
        import numpy as np
        import gradaudit
        raise SystemExit("never imported by the planner")

        @gradaudit.derivation
        def layer(xp, x: ("N", "D"), w: ("D", "M")):
            return xp.tanh(x @ w)

        @layer.backward
        def layer_backward(dout, x, w, *, out):
            g = dout * (1 - out ** 2)
            return g @ w.T, x.T @ g
        """))
    plan = mutate.plan_file(f, None, None, None)
    assert plan.kind == "derivation" and plan.judges == {"layer": None}
    assert {m.operator for m, _, _ in plan.mutants} >= {"sign", "transpose", "dout_in_place"}
    assert all(judges == ["layer"] for _, judges, _ in plan.mutants)


def test_catalogue_helpers_are_judged_by_every_op_that_uses_them():
    plan = mutate.plan_ops(["conv2d", "max_pool2d"], "_scatter", None)
    assert plan.mutants and all(j == ["conv2d", "max_pool2d"] for _, j, _ in plan.mutants)


# ---- the probe (in this process: no child) ------------------------------------------------------

def _subjects(op, mutant_source_of_backward):
    import reference_impl
    from gradaudit._mutant_worker import subject

    mod = sys.modules[getattr(reference_impl, f"{op}_backward").__module__]
    ns = dict(vars(mod))
    exec(compile(textwrap.dedent(mutant_source_of_backward), "<mutant>", "exec"), ns)
    fake = type(sys)("mutant")
    fake.__dict__.update(ns)
    return subject("catalogue", op, mod), subject("catalogue", op, fake)


def test_probe_calls_another_valid_subgradient_at_the_kink_equivalent():
    from gradaudit.mutant_probe import draw_cases, probe

    o, m = _subjects("relu", """
        def relu_backward(dout, cache):
            x = cache
            return dout * (x >= 0)
        """)
    p = probe(o, m, draw_cases(o, 4, 8))
    assert p["status"] == "equivalent" and p["kink_only"] > 0, p


def test_probe_sees_a_transpose_that_only_square_shapes_let_run():
    from gradaudit.mutant_probe import draw_cases, probe

    o, m = _subjects("linear_column", """
        def linear_column_backward(dout, cache):
            w, x = cache
            return dout @ x.T, w @ dout, dout.sum(axis=1, keepdims=True)
        """)
    p = probe(o, m, draw_cases(o, 4, 16))
    # raises wherever w is not square, runs where it is: a bug to find, not an invalid mutant
    assert p["status"] == "differs" and 0 < p["broken"] < p["ran"], p
    assert "matmul" in p["error"]


def test_probe_calls_a_rounding_level_difference_equivalent():
    from gradaudit.mutant_probe import draw_cases, probe

    o, m = _subjects("affine", """
        def affine_backward(dout, cache):
            x, w = cache
            dx = (dout @ w.T).reshape(x.shape)
            dw = (x.reshape(x.shape[0], -1).T @ (3 * dout)) / 3
            return dx, dw, dout.sum(axis=0)
        """)
    p = probe(o, m, draw_cases(o, 4, 8))
    assert p["status"] == "equivalent", p


# ---- summary and explanation ------------------------------------------------------------------

def _probe(**kw):
    p = {"status": "differs", "ran": 10, "broken": 0, "differs": 2, "written": 0, "kink_only": 0, "max_rel": 0.5,
         "by_regime": {"typical": [2, 5], "kinks": [0, 5]}, "by_breadth": {"narrow": [0, 4], "full": [2, 6]},
         "example": {"regime": "typical", "geometry": "x(1, 2)", "grads": ["x"], "rel": 0.5},
         "geoms_differ": ["x(3, 3)"], "geoms_narrow": ["x(2, 3)"], "error": None}
    p.update(kw)
    return p


def test_explain_names_the_geometry_the_ci_profile_does_not_draw():
    why = mutate.explain({"probe": {"affine": _probe()}, "dev_profile": "killed",
                          "dev_by": {"regime": "typical", "dtype": "float64", "shapes": {"x": [3, 3]}}}, "dev")
    assert "only on geometries the ci profile does not draw" in why and "x(3, 3)" in why and "x(2, 3)" in why
    assert "only in the typical regime" in why and "--profile dev check kills it" in why


def test_explain_a_write_the_check_missed_and_a_reshaped_gradient():
    why = mutate.explain({"probe": {"relu": _probe(differs=0, written=3)}}, None)
    assert "writes into the upstream gradient on 3 of 10" in why
    why = mutate.explain({"probe": {"bn": _probe(differs=0, broken=4, reshaped=4, error="returns gradients of shapes "
                                                                                         "[[1, 3, 2, 2]]")}}, None)
    assert "adapter reshapes" in why


def test_classify_each_outcome():
    killed = {"probe_status": "differs", "judges": {"a": {"check": {"killed": True, "by": {"message": "m"}}}}}
    survived = {"probe_status": "differs", "judges": {"a": {"check": {"killed": False}}}}
    assert mutate.classify(killed, ["a"], {"a"})[0] == "killed"
    assert mutate.classify(survived, ["a"], {"a"})[0] == "survived"
    assert mutate.classify(survived, ["a"], set())[0] == "not_scored"  # the original already fails
    assert mutate.classify({"probe_status": "equivalent", "judges": {}}, ["a"], {"a"})[0] == "equivalent"
    assert mutate.classify({"probe_status": "invalid", "judges": {"a": {"probe": {"error": "E"}}}}, ["a"],
                           {"a"})[0] == "invalid"
    assert mutate.classify({"died": "did not finish within 5 s"}, ["a"], {"a"}) == (
        "invalid", "the mutant did not finish within 5 s")
    assert mutate.classify({"internal_error": "boom"}, ["a"], {"a"})[0] == "error"


# ---- children: a mutant that hangs or crashes costs itself only --------------------------------

CS231N_RELU = """
import numpy as np

def relu_forward(x):
    return np.maximum(x, 0), x

def relu_backward(dout, cache):
    x = cache
    return dout * (x > 0)
"""


def test_a_hanging_and_a_crashing_mutant_cost_only_themselves(tmp_path):
    f = tmp_path / "layers.py"
    f.write_text(CS231N_RELU)
    hang = CS231N_RELU.replace("    return dout * (x > 0)", "    while True:\n        pass")
    crash = CS231N_RELU.replace("    return dout * (x > 0)",
                                "    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)")
    sign = CS231N_RELU.replace("return dout * (x > 0)", "return -dout * (x > 0)")
    # in this order the first child judges the original, `sign` and then dies in `crash`; a second
    # one starts for `hang` and is stopped at the timeout: both cost themselves, `sign` is judged
    mutants = [(Mutant(f"relu_backward:test:{k}", "relu_backward", "test", 8, k, s, ""), ["relu_backward"], None)
               for k, s in (("sign", sign), ("crash", crash), ("hang", hang))]
    plan = mutate.Plan("cs231n", str(f), mutants, {"relu_backward": None}, "layers.py")
    report = mutate.run(plan, timeout=20, explain_profile="none", dtypes=("float64",), oracles=("torch",))
    status = {r["id"].rsplit(":", 1)[1]: r["status"] for r in report["results"]}
    assert status == {"hang": "invalid", "crash": "invalid", "sign": "killed"}, report["results"]
    assert report["killed"] == 1 and report["score"] == 1.0
    assert not report["errors"]


# ---- the command ------------------------------------------------------------------------------

def _cli(*argv):
    from gradaudit.cli import main

    return main(["mutate", *argv])


def test_usage_errors_exit_2(tmp_path, capsys):
    assert _cli() == 2
    assert "give a .py file to mutate, or --ops" in capsys.readouterr().err
    assert _cli("--ops", "affine", str(tmp_path / "x.py")) == 2
    assert _cli("--ops", "nope") == 2
    assert "unknown op 'nope'" in capsys.readouterr().err
    assert _cli("--ops", "affine", "--operators", "sign,typo") == 2
    assert "unknown mutation operator 'typo'" in capsys.readouterr().err
    assert _cli("--ops", "affine", "--min-score", "95") == 2
    assert "--min-score is a fraction" in capsys.readouterr().err


def test_nothing_to_mutate_exits_5(tmp_path, capsys):
    f = tmp_path / "plain.py"
    f.write_text("def f(x):\n    return x\n")
    assert _cli(str(f), "--convention", "cs231n") == 5
    assert "no cs231n-named functions" in capsys.readouterr().err
    assert _cli("--ops", "affine", "-k", "no_such_function") == 5


def test_json_keys_and_min_score_exit(monkeypatch, capsys):
    fake = {"mutants": 4, "killed": 1, "equivalent": 1, "survived": 1, "invalid": 1, "score": 0.5,
            "functions": {"affine_backward": {}}, "operators": {}, "survivors": [], "equivalent_flagged": [],
            "originals_failing": [], "not_scored": [], "errors": [], "results": [], "profile": "ci",
            "subject": "catalogue affine", "kind": "catalogue"}
    monkeypatch.setattr(mutate, "run", lambda plan, **kw: fake)
    assert _cli("--ops", "affine", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert {"mutants", "killed", "equivalent", "survived", "invalid", "functions"} <= set(out)
    assert _cli("--ops", "affine", "--json", "--min-score", "0.9") == 1
    assert _cli("--ops", "affine", "--json", "--min-score", "0.5") == 0


# ---- the honesty check: the catalogue's mutation score in the ci profile ----------------------

# A fixed subset of the catalogue's mutants, about one per operator the cheap ops offer, judged as
# `gradaudit mutate --ops ...` judges them (ci profile, both dtypes, every oracle): (function,
# operator, a piece of the mutant's description) -> the recorded outcome.
HONESTY_OPS = ["affine", "relu", "softmax_cross_entropy", "svm_hinge", "max_pool2d", "rnn_step"]
HONESTY_MUTANTS = {
    ("rnn_step_backward", "transpose", "`wh.mT` -> `wh`"): "killed",  # a square weight: it type-checks
    ("affine_backward", "axis", "(axis -2 -> -1)"): "killed",  # db summed over the wrong axis
    ("relu_backward", "dout_in_place", "out=dout"): "killed",  # the result written into dout
    ("relu_backward", "kink", "`x >= 0`"): "equivalent",  # another valid subgradient at 0
    ("softmax_cross_entropy_backward", "one_over_n", "dropped"): "killed",
    ("softmax_cross_entropy_backward", "sign", "+= 1"): "killed",
    ("svm_hinge_backward", "kink", "margins >= 0"): "killed",  # credits the correct class too
    ("max_pool2d_backward", "swap_hw", "(x_shape, dtype, arg, pw, ph, stride)"): "killed",  # ph != pw only
    ("_scatter_windows", "accumulate", "instead of `+=`"): "killed",  # overlapping windows lose credit
}
RECORDED_SCORE = 1.0  # killed / (killed + survived) of the subset above, ci profile


def test_catalogue_mutation_score_does_not_drop():
    plan = mutate.plan_ops(HONESTY_OPS, None, None)
    chosen = {}
    for m, judges, mod in plan.mutants:
        for key in HONESTY_MUTANTS:
            if (m.function, m.operator) == key[:2] and key[2] in m.description and key not in chosen:
                chosen[key] = (m, judges, mod)
    assert set(chosen) == set(HONESTY_MUTANTS), f"no longer generated: {set(HONESTY_MUTANTS) - set(chosen)}"
    plan.mutants = list(chosen.values())
    report = mutate.run(plan, workers=2, explain_profile="none")
    assert not report["errors"] and not report["originals_failing"], report["errors"] or report["originals_failing"]
    assert report["score"] >= RECORDED_SCORE, (
        f"mutation score {report['score']} < recorded {RECORDED_SCORE}: "
        + "; ".join(f"{s['id']} ({s['description']}): {s['why']}" for s in report["survivors"]))
    got = {r["id"]: r["status"] for r in report["results"]}
    assert {key: got[m.id] for key, (m, _, _) in chosen.items()} == HONESTY_MUTANTS


# ---- the benchmark's other checkers (benchmarks/mutation.py) ------------------------------------

def test_the_benchmarks_checkers_pass_the_reference_and_kill_a_sign_flip():
    import importlib.util

    pytest.importorskip("torch", reason="gradcheck needs torch")
    pytest.importorskip("jax", reason="check_grads needs jax")
    spec = importlib.util.spec_from_file_location("bench_mutation", ROOT / "benchmarks" / "mutation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    o, m = _subjects("affine", """
        def affine_backward(dout, cache):
            x, w = cache
            dx = (dout @ w.T).reshape(x.shape)
            dw = x.reshape(x.shape[0], -1).T @ dout
            return dx, -dw, dout.sum(axis=0)
        """)
    original, mutant = bench.judge(o, o), bench.judge(m, o)
    tools = [t for t in bench.TOOLS if t != "gradaudit"]
    assert not any(original[t]["killed"] for t in tools), original
    assert all(mutant[t]["killed"] for t in tools), mutant
    assert mutant["input"]["differs"] and not original["input"]["differs"]
    # the notebook's helpers themselves: exact on a quadratic
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    num = bench.eval_numerical_gradient_array(lambda a: a ** 2, x.copy(), np.ones_like(x))
    assert bench.rel_error(num, 2 * x) < 1e-9
