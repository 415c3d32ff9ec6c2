"""Modes (issue 12): batchnorm_forward in test mode and the running statistics its train mode writes,
dropout in test mode, audited through the cs231n adapter on code written the way students write it.

Each user file is audited in this process with `gradaudit.check` (ci profile, float64, torch as the
requested oracle: triangulation consults JAX and finite differences on a failure).
"""
import textwrap

import numpy as np
import pytest

import gradaudit

pytest.importorskip("torch", reason="torch is not installed: the audit needs an oracle")

# the course's batchnorm_forward, as a student completes it: running statistics from bn_param (zeros
# when absent), updated in train mode with momentum, used in test mode
BN_FORWARD = '''
import numpy as np

def batchnorm_forward(x, gamma, beta, bn_param):
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))
    out, cache = None, None
    if mode == "train":
        sample_mean = np.mean(x, axis=0)
        sample_var = np.var(x, axis=0)
        x_hat = (x - sample_mean) / np.sqrt(sample_var + eps)
        out = gamma * x_hat + beta
        cache = (x, x_hat, sample_mean, sample_var, gamma, eps)
        running_mean = momentum * running_mean + (1 - momentum) * sample_mean
        running_var = momentum * running_var + (1 - momentum) * sample_var
    elif mode == "test":
        x_hat = (x - running_mean) / np.sqrt(running_var + eps)
        out = gamma * x_hat + beta
    else:
        raise ValueError('Invalid forward batchnorm mode "%s"' % mode)
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache
'''

# the course's backward: train mode only (a test-mode forward leaves cache = None)
BN_BACKWARD = '''
def batchnorm_backward(dout, cache):
    x, x_hat, mu, var, gamma, eps = cache
    N = dout.shape[0]
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * x_hat, axis=0)
    dx_hat = dout * gamma
    dx = (N * dx_hat - np.sum(dx_hat, axis=0) - x_hat * np.sum(dx_hat * x_hat, axis=0)) / (N * np.sqrt(var + eps))
    return dx, dgamma, dbeta
'''

# forward and backward that carry the mode in the cache and branch on it in the backward
BN_WITH_TEST_BACKWARD = BN_FORWARD.replace(
    '''        out = gamma * x_hat + beta
    else:''', '''        out = gamma * x_hat + beta
        cache = ("test", x_hat, running_var, gamma, eps)
    else:''').replace(
    "cache = (x, x_hat, sample_mean, sample_var, gamma, eps)",
    'cache = ("train", x_hat, sample_var, gamma, eps)') + '''

def batchnorm_backward(dout, cache):
    mode, x_hat, var, gamma, eps = cache
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * x_hat, axis=0)
    if mode == "test":  # the statistics are constants
        return dout * gamma / np.sqrt(var + eps), dgamma, dbeta
    N = dout.shape[0]
    dx_hat = dout * gamma
    dx = (N * dx_hat - np.sum(dx_hat, axis=0) - x_hat * np.sum(dx_hat * x_hat, axis=0)) / (N * np.sqrt(var + eps))
    return dx, dgamma, dbeta
'''


def _swap(source, old, new):
    assert old in source, old
    return source.replace(old, new)


def audit(tmp_path, source, name="user_layers.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return gradaudit.check(path, convention="cs231n", oracles=("torch",), dtypes=("float64",),
                           report=tmp_path / "report", raise_on_failure=False)


def of(records, target):
    recs = [r for r in records if r["target"] == target]
    assert recs, f"{target} was not checked: {[r['target'] for r in records]}"
    return recs


def fails(records, target):
    return [r for r in of(records, target) if r["status"] == "fail"]


# ---- correct code passes -------------------------------------------------------------------------

def test_correct_batchnorm_forward_passes_in_both_modes(tmp_path):
    records = audit(tmp_path, BN_FORWARD + BN_BACKWARD)
    for target in ("batchnorm_forward", "batchnorm_backward"):
        recs = of(records, target)
        assert all(r["status"] == "pass" for r in recs), [(r["id"], r["message"]) for r in recs]
        assert all(r["examples"] >= 12 for r in recs)
    assert {r["op"] for r in of(records, "batchnorm_forward")} == {"batchnorm_running"}


def test_a_backward_that_branches_on_test_mode_is_judged_there(tmp_path):
    assert all(r["status"] == "pass" for r in of(audit(tmp_path, BN_WITH_TEST_BACKWARD), "batchnorm_forward"))
    wrong = _swap(BN_WITH_TEST_BACKWARD, "return dout * gamma / np.sqrt(var + eps), dgamma, dbeta",
                  "return dout / np.sqrt(var + eps), dgamma, dbeta")  # gamma forgotten in test mode
    bad = fails(audit(tmp_path, wrong, "wrong_test_backward.py"), "batchnorm_forward")
    assert bad and all(r["kind"] == "gradient" and r["blame"] == "reference" for r in bad), bad
    assert "batchnorm_backward's gradient judged" in bad[0]["message"], bad[0]["message"]


def test_a_backward_that_refuses_test_mode_leaves_it_to_the_forward(tmp_path):
    refuses = _swap(BN_WITH_TEST_BACKWARD, "return dout * gamma / np.sqrt(var + eps), dgamma, dbeta",
                    'raise NotImplementedError("no backward in test mode")')
    passing = of(audit(tmp_path, refuses), "batchnorm_forward")
    assert all(r["status"] == "pass" for r in passing)
    # what was judged is said on a pass too, not only on a fail or an error
    assert all("output judged, not the gradient" in r["message"] for r in passing), [r["message"] for r in passing]
    # with a wrong test-mode forward, the fail says what was judged, and why
    wrong = _swap(refuses, "x_hat = (x - running_mean) / np.sqrt(running_var + eps)",
                  "x_hat = (x - running_mean) / np.sqrt(running_var + eps) ** 2")
    bad = fails(audit(tmp_path, wrong, "wrong_test_forward.py"), "batchnorm_forward")
    assert bad and all(r["phase"] == "forward" for r in bad), bad
    assert "output judged, not the gradient; batchnorm_backward fails on a test-mode cache " \
           "(NotImplementedError: no backward in test mode)" in bad[0]["message"], bad[0]["message"]


# ---- wrong running statistics: a forward fail on batchnorm_forward, naming the statistic ----------

RUNNING_BUGS = {
    # id: (old, new, statistic named, the slip's words)
    "unbiased-variance": ("running_var = momentum * running_var + (1 - momentum) * sample_var",
                          "running_var = momentum * running_var + (1 - momentum) * np.var(x, axis=0, ddof=1)",
                          "running_var", "unbiased"),
    "momentum-the-other-way": (
        "running_mean = momentum * running_mean + (1 - momentum) * sample_mean",
        "running_mean = (1 - momentum) * running_mean + momentum * sample_mean", "running_mean",
        "momentum weighs the batch"),
    "never-written-back": ('    bn_param["running_mean"] = running_mean\n    bn_param["running_var"] = running_var\n',
                           "", "running_mean", "not updated"),
    "written-under-another-key": ('bn_param["running_var"] = running_var', 'bn_param["running_variance"] = running_var',
                                  "running_var", "not updated"),
    "std-instead-of-variance": ("running_var = momentum * running_var + (1 - momentum) * sample_var",
                                "running_var = momentum * running_var + (1 - momentum) * np.sqrt(sample_var)",
                                "running_var", "standard deviation"),
}


@pytest.mark.parametrize("bug", sorted(RUNNING_BUGS))
def test_wrong_running_statistics_fail_the_forward(tmp_path, bug):
    old, new, statistic, slip = RUNNING_BUGS[bug]
    records = audit(tmp_path, _swap(BN_FORWARD, old, new) + BN_BACKWARD)
    bad = fails(records, "batchnorm_forward")
    assert bad, [(r["id"], r["status"], r["message"]) for r in of(records, "batchnorm_forward")]
    for r in bad:
        # ddof=1 on a batch of one is NaN: a forward fail of kind nonfinite
        assert r["phase"] == "forward" and r["kind"] in ("forward", "nonfinite") and r["blame"] == "reference", r
        assert r["message"].startswith("forward_mismatch in batchnorm_forward"), r["message"]
        assert f"bn_param['{statistic}']" in r["message"] and slip in r["message"], r["message"]
        assert "output judged, not the gradient" in r["message"], r["message"]  # the course's backward
    # the train-mode output and the backward are right: the batchnorm pair passes
    assert all(r["status"] == "pass" for r in of(records, "batchnorm_backward"))


# ---- wrong test mode ---------------------------------------------------------------------------

TEST_MODE_BUGS = {
    "batch-statistics-in-test-mode": ("x_hat = (x - running_mean) / np.sqrt(running_var + eps)",
                                      "x_hat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)"),
    "no-eps-in-test-mode": ("x_hat = (x - running_mean) / np.sqrt(running_var + eps)",
                            "x_hat = (x - running_mean) / np.sqrt(running_var)"),
}


@pytest.mark.parametrize("bug", sorted(TEST_MODE_BUGS))
def test_a_wrong_test_mode_fails_the_forward(tmp_path, bug):
    records = audit(tmp_path, _swap(BN_FORWARD, *TEST_MODE_BUGS[bug]))
    bad = fails(records, "batchnorm_forward")
    assert bad, [(r["id"], r["status"], r["message"]) for r in of(records, "batchnorm_forward")]
    for r in bad:
        assert r["phase"] == "forward" and r["blame"] == "reference", r
        assert "bn_param['running" not in r["message"], r["message"]  # the running statistics are right
        assert "batchnorm_backward is not defined" in r["message"], r["message"]


def test_a_forward_that_drops_the_running_statistics_is_named(tmp_path):
    source = _swap(BN_FORWARD, '    bn_param["running_var"] = running_var\n',
                   '    bn_param["running_var"] = running_var\n    bn_param.clear()\n')
    recs = of(audit(tmp_path, source), "batchnorm_forward")
    assert all(r["status"] == "error" for r in recs), recs
    assert "removed bn_param['running_mean']" in recs[0]["message"], recs[0]["message"]


# ---- dropout: test mode is the identity ----------------------------------------------------------

DROPOUT = '''
import numpy as np

def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    if "seed" in dropout_param:
        np.random.seed(dropout_param["seed"])
    mask = None
    out = None
    if mode == "train":
        mask = (np.random.rand(*x.shape) < p) / p
        out = x * mask
    elif mode == "test":
        out = x
    cache = (dropout_param, mask)
    out = out.astype(x.dtype, copy=False)
    return out, cache

def dropout_backward(dout, cache):
    dropout_param, mask = cache
    mode = dropout_param["mode"]
    dx = None
    if mode == "train":
        dx = dout * mask
    elif mode == "test":
        dx = dout
    return dx
'''


def test_dropout_test_mode_is_the_identity(tmp_path):
    assert all(r["status"] == "pass" for r in of(audit(tmp_path, DROPOUT), "dropout_backward"))
    # the habit of non-inverted dropout: scale by p at test time (on top of inverted training)
    scaled = _swap(DROPOUT, "    elif mode == \"test\":\n        out = x\n", "    elif mode == \"test\":\n        out = x * p\n")
    bad = fails(audit(tmp_path, scaled, "scaled_dropout.py"), "dropout_backward")
    assert bad and all(r["phase"] == "forward" and r["params"]["mode"] == "test" for r in bad), bad
    assert bad[0]["message"].startswith("forward_mismatch in dropout_forward"), bad[0]["message"]
