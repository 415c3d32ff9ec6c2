"""The course beyond the layers: assignment 1's linear classifiers (naive against vectorized, the
regularisation convention read from the loss), the model classes of assignments 1-3 (every entry of
`grads` against the frameworks' network and the class's own finite differences; a wiring bug told
apart from a wrong layer; test mode), files in a package, and `*_alt` with its own forward.

The example files are checked as a user's test checks them (gradaudit.check, --convention cs231n),
kept fast: the ci profile, float64, torch as the requested oracle (a failure is still triangulated
with JAX and finite differences). Each example file is checked once per module. Model classes are
not yet checked in `gradaudit audit`'s confined child (the child runs functions, not objects): the
package-layout test runs the CLI and shows what it says of them.
"""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import gradaudit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "cs231n"
FAST = ["--convention", "cs231n", "--profile", "ci", "--oracles", "torch", "--dtypes", "float64"]


def cli_audit(path, report, *extra):
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(path), "--report", str(report), *FAST, *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, "CI": "1"})
    results = Path(report) / "results.jsonl"
    r.records = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    r.by_target = {}
    for rec in r.records:
        r.by_target.setdefault(rec["target"], []).append(rec)
    return r


def audit(path, report):
    """A file's functions and model classes, checked in this process with the options of FAST."""
    recs = gradaudit.check(path, convention="cs231n", oracles=("torch",), dtypes=("float64",), profile="ci",
                           report=report, raise_on_failure=False)
    r = types.SimpleNamespace(records=recs, stdout="", stderr="", by_target={},
                              returncode=int(any(x["status"] in ("fail", "error") for x in recs)))
    for rec in r.records:
        r.by_target.setdefault(rec["target"], []).append(rec)
    return r


def statuses(recs):
    return {r["status"] for r in recs}


def check(tmp_path, source, name="student.py", **kw):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    recs = gradaudit.check(path, convention="cs231n", oracles=("torch",), report=tmp_path / "report",
                           raise_on_failure=False, **kw)
    out = {}
    for r in recs:
        out.setdefault(r["target"], []).append(r)
    return out


# ---- assignment 1 ------------------------------------------------------------------------------

A1 = {"svm_loss_naive", "svm_loss_vectorized", "softmax_loss_naive", "softmax_loss_vectorized", "TwoLayerNet",
      "TwoLayerNet.test_mode"}


@pytest.fixture(scope="module")
def a1_correct(tmp_path_factory):
    return audit(EXAMPLES / "assignment1_correct.py", tmp_path_factory.mktemp("a1c"))


@pytest.fixture(scope="module")
def a1_buggy(tmp_path_factory):
    return audit(EXAMPLES / "assignment1_buggy.py", tmp_path_factory.mktemp("a1b"))


@pytest.mark.xdist_group("course-a1-correct")
def test_assignment1_correct_passes_every_function_and_class(a1_correct):
    assert a1_correct.returncode == 0, a1_correct.stdout + a1_correct.stderr
    assert set(a1_correct.by_target) == A1
    for target, recs in a1_correct.by_target.items():
        assert statuses(recs) <= {"pass", "kink"}, (target, [r["message"] for r in recs])
    # the linear classifiers are checked in every regime of their op, the hinge's exact kinks included
    assert {r["regime"] for r in a1_correct.by_target["svm_loss_naive"]} == {"typical", "large", "overflow", "kinks"}


@pytest.mark.xdist_group("course-a1-buggy")
def test_vectorized_svm_with_the_other_years_reg_gradient_is_out(a1_buggy):
    assert a1_buggy.returncode == 1
    assert statuses(a1_buggy.by_target["svm_loss_naive"]) == {"pass"}
    recs = [r for r in a1_buggy.by_target["svm_loss_vectorized"] if r["status"] == "fail"]
    assert recs and all(r["kind"] == "gradient" and r["blame"] == "reference" and r["phase"] == "grad[W]"
                        for r in recs)
    msg = recs[0]["message"]
    # its loss carries reg·ΣW², so reg·W (right for ½·reg·ΣW²) is wrong for it; naive vs vectorized names it
    assert "reg·Σ W² over W, so the gradient carries 2·reg·W" in msg, msg
    assert "svm_loss_vectorized and svm_loss_naive disagree" in msg, msg
    assert "torch decides: svm_loss_vectorized is the one that is out" in msg, msg


@pytest.mark.xdist_group("course-a1-buggy")
def test_naive_softmax_without_max_shift_overflows_and_the_vectorized_one_does_not(a1_buggy):
    # exp overflows (NaN/Inf) once scores are ~710 apart; in the large regime a subnormal probability
    # can also cost the log its digits first (a finite forward mismatch): both are the missing shift
    naive = {r["regime"]: r for r in a1_buggy.by_target["softmax_loss_naive"]}
    assert naive["typical"]["status"] == "pass"
    assert naive["overflow"]["status"] == "fail" and naive["overflow"]["kind"] == "nonfinite"
    assert "torch decides: softmax_loss_naive is the one that is out" in naive["overflow"]["message"]
    assert statuses(a1_buggy.by_target["softmax_loss_vectorized"]) == {"pass"}


@pytest.mark.xdist_group("course-a1-buggy")
def test_two_layer_net_w2_from_the_pre_relu_activation(a1_buggy):
    recs = a1_buggy.by_target["TwoLayerNet"]
    assert statuses(recs) == {"fail"}
    assert recs[0]["phase"] == "grad[W2]" and recs[0]["kind"] == "gradient"
    msg = recs[0]["message"]
    assert "calls none of the assignment's layer functions, so the bug is in TwoLayerNet.loss itself" in msg, msg
    assert "grad[W2] (the weight of affine layer 2) disagrees with torch" in msg, msg
    assert statuses(a1_buggy.by_target["TwoLayerNet.test_mode"]) == {"pass"}


def test_finite_differences_of_linear_softmax_at_overflow_scale_are_judged_with_their_truncation():
    """Found by the dev-profile differential suite: W = 3 everywhere (every class tied), |X| ~ 2e3.
    The step in W moves the scores by h·|X| ~ 0.04: the central difference's truncation error exceeds
    the policy's 1e-5 relative; the op's tolerance factor (h·|X|)²/(10·rtol) covers it, and only it."""
    import dataclasses

    from properties import catalogue
    from properties.evaluate import evaluate
    from properties.spec import Case
    from properties.target import Target

    X = np.array([[925.73022109, 667.89513671], [1440.42265044, 904.90011715], [264.33062684, 1161.59505491],
                  [2104.00004513, 1747.08096313], [96.26476419, -465.42147105]])
    case = Case({"W": np.full((2, 3), 3.0)}, {"X": X, "y": np.array([0, 1, 2, 0, 1]), "reg": 0.0, "reg_scale": 1.0})
    spec, side = catalogue.load()["linear_softmax"], ("numeric", "cpu")
    for s, want in ((spec, "pass"), (dataclasses.replace(spec, tolerance=None), "fail")):
        v = evaluate(s, Target.reference(s), case, "float64", [side], douts=(np.float64(1.455),)).sides[side]
        assert v.status == want, v.message


LINEAR_SVM = """
import numpy as np

def svm_loss_vectorized(W, X, y, reg):
    n = X.shape[0]
    scores = X.dot(W)
    margins = np.maximum(0, scores - scores[np.arange(n), y][:, None] + 1)
    margins[np.arange(n), y] = 0
    loss = margins.sum() / n + {loss_reg}
    binary = (margins {cmp} 0).astype(W.dtype)
    binary[np.arange(n), y] = -binary.sum(axis=1)
    return loss, X.T.dot(binary) / n + {grad_reg}
"""


@pytest.mark.parametrize("loss_reg, grad_reg, ok", [
    ("0.5 * reg * np.sum(W * W)", "reg * W", True),  # the ½ convention, consistent
    ("0.5 * reg * np.sum(W * W)", "2 * reg * W", False),  # the other year's gradient for this loss
    ("reg * np.sum(W * W)", "2 * reg * W", True),
])
def test_the_reg_convention_is_read_from_the_loss(tmp_path, loss_reg, grad_reg, ok):
    got = check(tmp_path, LINEAR_SVM.format(loss_reg=loss_reg, grad_reg=grad_reg, cmp=">"))["svm_loss_vectorized"]
    typical = [r for r in got if r["regime"] == "typical"]
    if ok:
        assert statuses(got) == {"pass"}, [r["message"] for r in got]
    else:
        assert statuses(typical) == {"fail"} and typical[0]["phase"] == "grad[W]"
        assert "½·reg·Σ W² over W, so the gradient carries reg·W" in typical[0]["message"]


HINGE_AT_ZERO_ACTIVE = """
import numpy as np

def svm_loss_naive(W, X, y, reg):
    dW = np.zeros_like(W)
    loss = 0.0
    for i in range(X.shape[0]):
        scores = X[i].dot(W)
        for j in range(W.shape[1]):
            if j == y[i]:
                continue
            margin = scores[j] - scores[y[i]] + 1
            if margin >= 0:  # the hinge at 0 counted as active: a subgradient too
                loss += margin
                dW[:, j] += X[i]
                dW[:, y[i]] -= X[i]
    loss /= X.shape[0]
    dW /= X.shape[0]
    return loss + reg * np.sum(W * W), dW + 2 * reg * W
"""


def test_a_hinge_margin_at_exactly_zero_is_a_kink_not_a_fail(tmp_path):
    recs = {r["regime"]: r for r in check(tmp_path, HINGE_AT_ZERO_ACTIVE)["svm_loss_naive"]}
    assert recs["kinks"]["status"] == "kink", recs["kinks"]["message"]
    assert "at the hinge 0" in recs["kinks"]["message"]
    assert all(recs[g]["status"] == "pass" for g in ("typical", "large", "overflow"))
    # `>= 0` on margins already clamped by np.maximum counts every class: no subgradient at all
    got = check(tmp_path, LINEAR_SVM.format(loss_reg="reg * np.sum(W * W)", grad_reg="2 * reg * W", cmp=">="),
                name="clamped.py")
    assert statuses(got["svm_loss_vectorized"]) == {"fail"}


def test_naive_and_vectorized_sharing_a_bug_are_both_out_and_told_so(tmp_path):
    wrong_together = LINEAR_SVM.format(loss_reg="reg * np.sum(W * W)", grad_reg="reg * W", cmp=">")
    source = wrong_together + wrong_together.replace("svm_loss_vectorized", "svm_loss_naive")
    got = check(tmp_path, source)
    for name in ("svm_loss_naive", "svm_loss_vectorized"):
        bad = [r for r in got[name] if r["status"] == "fail"]
        assert bad, name
        assert "agree on all" in bad[0]["message"] and "cannot catch it" in bad[0]["message"], bad[0]["message"]


# ---- model classes -----------------------------------------------------------------------------

MODELS = {"TwoLayerNet", "TwoLayerNet.test_mode", "FullyConnectedNet", "FullyConnectedNet.test_mode",
          "FullyConnectedNet.batchnorm", "FullyConnectedNet.batchnorm.test_mode", "FullyConnectedNet.layernorm",
          "FullyConnectedNet.dropout", "FullyConnectedNet.dropout.test_mode", "ThreeLayerConvNet",
          "ThreeLayerConvNet.test_mode", "CaptioningRNN.rnn", "CaptioningRNN.lstm"}


@pytest.fixture(scope="module")
def models_correct(tmp_path_factory):
    return audit(EXAMPLES / "models_correct.py", tmp_path_factory.mktemp("mc"))


@pytest.fixture(scope="module")
def models_buggy(tmp_path_factory):
    return audit(EXAMPLES / "models_buggy.py", tmp_path_factory.mktemp("mb"))


@pytest.mark.xdist_group("course-models-correct")
def test_correct_models_pass_in_every_configuration_with_their_layers(models_correct):
    assert models_correct.returncode == 0, models_correct.stdout + models_correct.stderr
    assert MODELS <= set(models_correct.by_target)
    for target, recs in models_correct.by_target.items():
        assert statuses(recs) <= {"pass", "kink"}, (target, [r["message"] for r in recs])
        assert sum(r["examples"] for r in recs) > 0, target
    # the layers the models import are audited in the same report
    assert {"affine_backward", "batchnorm_backward", "dropout_backward", "word_embedding_backward",
            "conv_backward_naive"} <= set(models_correct.by_target)


@pytest.mark.xdist_group("course-models-buggy")
def test_missing_reg_in_one_grad_is_a_wiring_bug_on_that_parameter(models_buggy):
    recs = models_buggy.by_target["TwoLayerNet"]
    assert statuses(recs) == {"fail"} and recs[0]["phase"] == "grad[W1]"
    msg = recs[0]["message"]
    assert "a wiring bug in TwoLayerNet.loss" in msg and "grad[W1] (the weight of affine layer 1)" in msg, msg
    assert "grad[W2]" not in msg.split("on a probe")[1], msg  # W2 keeps its reg term


@pytest.mark.xdist_group("course-models-buggy")
def test_swapped_batchnorm_grads_and_test_mode_left_in_train(models_buggy):
    t = models_buggy.by_target
    train = t["FullyConnectedNet.batchnorm"][0]
    assert train["status"] == "fail" and train["phase"].startswith(("grad[gamma", "grad[beta"))
    assert "a wiring bug in FullyConnectedNet.loss" in train["message"]
    for name in ("gamma1", "beta1", "gamma2", "beta2"):
        assert f"grad[{name}]" in train["message"].split("on a probe")[1], train["message"]
    test = t["FullyConnectedNet.batchnorm.test_mode"][0]
    assert test["status"] == "fail" and test["kind"] == "forward", test["message"]
    assert "bn_param['mode'] = 'test'" in test["message"]
    # the configurations without the bugs pass
    for ok in ("FullyConnectedNet", "FullyConnectedNet.test_mode", "FullyConnectedNet.layernorm",
               "FullyConnectedNet.dropout", "FullyConnectedNet.dropout.test_mode", "TwoLayerNet.test_mode"):
        assert statuses(t[ok]) == {"pass"}, (ok, [r["message"] for r in t[ok]])


@pytest.mark.xdist_group("course-models-buggy")
def test_a_model_wrong_because_its_layer_is_points_at_the_layer(models_buggy):
    t = models_buggy.by_target
    assert statuses(t["word_embedding_backward"]) == {"fail"}
    for cell in ("rnn", "lstm"):
        rec = t[f"CaptioningRNN.{cell}"][0]
        assert rec["status"] == "fail" and rec["phase"] == "grad[W_embed]", rec["message"]
        assert "calls word_embedding_backward, which fails on its own" in rec["message"], rec["message"]
        assert "see word_embedding_backward's own verdict" in rec["message"]


def test_finite_differences_of_a_float32_cell_run_the_class_in_float64(tmp_path):
    # the conv layer allocates its output by x.dtype: given the float32 cell's data, the class would
    # compute in float32 under the finite differences' float64 steps, and its quotients would be noise
    source = f"""
    import sys
    sys.path.insert(0, {str(EXAMPLES)!r})
    from models_correct import ThreeLayerConvNet
    """
    path = tmp_path / "convnet.py"
    path.write_text(textwrap.dedent(source))
    recs = gradaudit.check(path, convention="cs231n", oracles=("numeric",), dtypes=("float32",),
                           report=tmp_path / "report", raise_on_failure=False)
    assert {r["target"] for r in recs} == {"ThreeLayerConvNet", "ThreeLayerConvNet.test_mode"}
    assert statuses(recs) == {"pass"}, [r["message"] for r in recs]


def test_a_package_layout_with_relative_and_absolute_sibling_imports(tmp_path):
    r = cli_audit(EXAMPLES / "assignment2" / "cs231n" / "classifiers" / "fc_net.py", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {"TwoLayerNet", "TwoLayerNet.test_mode", "affine_backward", "relu_backward", "softmax_loss"} <= set(r.by_target)
    models = [rec for rec in r.records if rec["target"].startswith("TwoLayerNet")]
    assert all(rec["status"] == "pass" for rec in r.records if rec not in models)
    # the audit's child runs functions, not objects: its classes are not checked there yet, and it says so
    assert models and all(rec["status"] == "skip" and "gradaudit.check" in rec["message"] for rec in models)
    r = audit(EXAMPLES / "assignment2" / "cs231n" / "classifiers" / "fc_net.py", tmp_path / "in-process")
    assert all(rec["status"] == "pass" for rec in r.records) and "TwoLayerNet" in r.by_target


UNFINISHED = """
import numpy as np

class FullyConnectedNet(object):
    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout_keep_ratio=1,
                 normalization=None, reg=0.0, weight_scale=1e-2, dtype=np.float32, seed=None):
        dims = [input_dim] + hidden_dims + [num_classes]
        self.params = {}
        for i in range(len(dims) - 1):
            self.params['W%d' % (i + 1)] = weight_scale * np.random.randn(dims[i], dims[i + 1])
            self.params['b%d' % (i + 1)] = np.zeros(dims[i + 1])
        # TODO: batch/layer normalization and dropout

    def loss(self, X, y=None):
        raise NotImplementedError
"""


def test_an_unfinished_configuration_is_skipped_with_the_reason(tmp_path):
    got = check(tmp_path, UNFINISHED)
    bn = got["FullyConnectedNet.batchnorm"]
    assert statuses(bn) == {"skip"} and "normalisation not implemented?" in bn[0]["message"], bn[0]["message"]
    assert "missing ['beta1', 'beta2', 'gamma1', 'gamma2']" in bn[0]["message"]
    plain = got["FullyConnectedNet"]  # buildable, but its loss raises: an error naming it
    assert statuses(plain) == {"error"} and "NotImplementedError" in plain[0]["message"]


def test_batchnorm_amplified_rounding_is_within_the_models_tolerance_and_only_there():
    """A batch of 2 whose second layer's pre-activations nearly coincide (σ = 0.007, γ = 1.3): the bias
    feeding that batch norm has gradient exactly 0, which torch computes as 1.6e-13 by rounding γ/σ
    times larger than the policy's scale. Found by a dev-profile audit of models_correct.py."""
    import dataclasses

    from gradaudit._guard import Guard
    from gradaudit.audit import InProcess, Job, build, import_file
    from properties.evaluate import evaluate
    from properties.spec import Case

    d = np.load(Path(__file__).parent / "data" / "fcn_batchnorm_rounding.npz")
    case = Case({k[6:]: d[k] for k in d if k.startswith("input/")},
                {**{k[6:]: d[k] for k in d if k.startswith("param/")}, **json.loads(str(d["params"]))})
    job = Job("FullyConnectedNet.batchnorm", "fc_net", "cs231n", str(EXAMPLES / "models_correct.py"), "m",
              "FullyConnectedNet.batchnorm", ["typical"])
    code = InProcess(Guard())
    code.modules["m"] = import_file(EXAMPLES / "models_correct.py")
    spec, target, _, _ = build(job, code, {})
    side = ("torch", "cpu")
    assert evaluate(spec, target, case, "float64", [side], douts=(d["dout/0"],)).sides[side].status == "pass"
    without = dataclasses.replace(spec, tolerance=None)
    verdict = evaluate(without, target, case, "float64", [side], douts=(d["dout/0"],)).sides[side]
    assert verdict.status == "fail" and verdict.phase == "grad[b2]", verdict.message


# ---- *_alt with its own forward ----------------------------------------------------------------

ALT = """
import numpy as np

def batchnorm_forward(x, gamma, beta, bn_param):
    mu, var = x.mean(axis=0), x.var(axis=0)
    xhat = (x - mu) / np.sqrt(var + bn_param.get('eps', 1e-5))
    return gamma * xhat + beta, (x, mu, var, gamma, bn_param.get('eps', 1e-5))

def batchnorm_forward_alt(x, gamma, beta, bn_param):
    # its own cache, which only batchnorm_backward_alt reads
    inv = 1 / np.sqrt(x.var(axis=0) + bn_param.get('eps', 1e-5))
    xhat = (x - x.mean(axis=0)) * inv
    return gamma * xhat + beta, {'xhat': xhat, 'inv': inv, 'gamma': gamma}

def batchnorm_backward_alt(dout, cache):
    xhat, inv, gamma, n = cache['xhat'], cache['inv'], cache['gamma'], dout.shape[0]
    dxhat = dout * gamma
    dx = inv / n * (n * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0))
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)
"""


def test_alt_backward_goes_with_the_files_own_alt_forward(tmp_path):
    got = check(tmp_path, ALT)
    assert statuses(got["batchnorm_backward_alt"]) == {"pass"}, [r["message"] for r in got["batchnorm_backward_alt"]]
    # without batchnorm_forward_alt, batchnorm_forward's tuple cache reaches it: an error naming it
    got = check(tmp_path, ALT.replace("def batchnorm_forward_alt", "def _unused_forward"), name="no_alt.py")
    assert statuses(got["batchnorm_backward_alt"]) == {"error"}


# ---- the model forwards: torch and JAX build the same networks ----------------------------------

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")


def _torch_vjp(op, arrays, params, dout):
    from oracles import torch_ops

    xs = [torch.tensor(a, requires_grad=True) for a in arrays]
    kw = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in params.items()}
    out = getattr(torch_ops, op)(*xs, **kw)
    grads = torch.autograd.grad(out, xs, torch.as_tensor(dout), allow_unused=True)
    return out.detach().numpy(), [np.zeros_like(a) if g is None else g.numpy() for a, g in zip(arrays, grads)]


@pytest.fixture(scope="module")
def _jax_x64():
    """float64 on the JAX side; XLA's optimisation passes off (they cost more than the run here), as
    in test_framework_forwards."""
    settings = {"jax_enable_x64": True, "jax_disable_most_optimizations": True}
    before = {k: jax.config.values[k] for k in settings}
    for k, v in settings.items():
        jax.config.update(k, v)
    yield
    for k, v in before.items():
        jax.config.update(k, v)


def _jax_vjp(op, arrays, params, dout):
    from oracles import jax_ops

    static = {k: v for k, v in params.items() if not isinstance(v, np.ndarray)}
    dynamic = {k: v for k, v in params.items() if isinstance(v, np.ndarray)}

    @jax.jit
    def forward_and_vjp(xs, dyn, d):
        out, pullback = jax.vjp(lambda *a: getattr(jax_ops, op)(*a, **dyn, **static), *xs)
        return out, pullback(d)

    out, grads = forward_and_vjp(tuple(arrays), dynamic, np.asarray(dout))
    return np.asarray(out), [np.asarray(g) for g in grads]


def _model_cases():
    from properties.catalogue import _models as M
    from gradaudit.diagnosis import draw_cases

    out = []
    for net, variants in ((M.FULLY_CONNECTED_NET, ("", "batchnorm", "layernorm", "dropout")), (M.CONV_NET, ("",)),
                          (M.CAPTIONING_RNN, ("rnn", "lstm"))):
        for variant in variants:
            # test mode where it differs from train mode: batch norm's running statistics, no dropout
            for test in (False, True) if variant in ("batchnorm", "dropout") else (False,):
                case = draw_cases(M.cases(net, variant, "typical", test, "full", geometries=net.geometries[1:2]), 1)[0]
                if "captions" in case.params:  # words that are not all <NULL>: a loss to differentiate
                    n, t = case.params["captions"].shape
                    case.params["captions"] = np.arange(n * t).reshape(n, t) % net.geometries[1][5]
                if variant == "dropout" and not test:  # scaled masks, as read back from the user's dropout
                    rng = np.random.default_rng(1)
                    n, hidden = case.params["X"].shape[0], net.geometries[1][2]
                    case.params.update({f"mask{k}": (rng.random((n, h)) < 0.75) / 0.75 for k, h in enumerate(hidden, 1)})
                out.append(pytest.param(net.op, case, test, id=f"{net.op}-{variant or 'plain'}{'-test' if test else ''}"))
    return out


@pytest.mark.parametrize("op, case, test", _model_cases())
def test_torch_and_jax_model_forwards_agree(op, case, test, _jax_x64):
    arrays = list(case.arrays.values())
    rng = np.random.default_rng(0)
    data = case.params.get("X", case.params.get("features"))
    dout = rng.standard_normal((data.shape[0], arrays[-1].shape[0])) if test else np.asarray(1.7)
    t_out, t_grads = _torch_vjp(op, arrays, case.params, dout)
    j_out, j_grads = _jax_vjp(op, arrays, case.params, dout)
    assert t_out.shape == dout.shape
    np.testing.assert_allclose(t_out, j_out, rtol=1e-10, atol=1e-12)
    if test:  # test-mode scores carry a stopped gradient
        assert not any(np.any(g) for g in t_grads + j_grads)
        return
    assert all(np.any(g) for g in t_grads[:2])  # the first layer's gradients are not trivially 0
    for name, tg, jg in zip(case.arrays, t_grads, j_grads):
        np.testing.assert_allclose(tg, jg, rtol=1e-9, atol=1e-11, err_msg=f"{op} grad[{name}]")
