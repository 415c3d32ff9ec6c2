"""`gradaudit audit`: a user's cs231n-style file, judged as a user would run it (a subprocess, its
exit code, its terminal output, its records), and `gradaudit.check` from inside a test.

Kept fast: the ci profile, float64, and torch as the requested oracle (triangulation still consults
jax and the finite differences on a failure). Each example file is audited once per module.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gradaudit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "cs231n"
FAST = ["--profile", "ci", "--oracles", "torch", "--dtypes", "float64"]
CS231N_TARGETS = {
    "affine_backward", "relu_backward", "softmax_loss", "svm_loss", "batchnorm_backward",
    "batchnorm_backward_alt", "layernorm_backward", "dropout_backward", "conv_backward_naive",
    "max_pool_backward_naive", "rnn_step_backward", "rnn_backward", "lstm_step_backward", "lstm_backward",
    "word_embedding_backward", "temporal_affine_backward", "temporal_softmax_loss", "spatial_batchnorm_backward",
    "batchnorm_forward"}  # batchnorm_forward: its test mode and running statistics (tests/test_modes.py)


def audit(path, report, *extra, timeout=600):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(path), "--report", str(report), *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=timeout, env={**os.environ, "CI": "1"})
    r.seconds = time.perf_counter() - t0
    r.records = ([json.loads(x) for x in (Path(report) / "results.jsonl").read_text().splitlines()]
                 if (Path(report) / "results.jsonl").exists() else [])
    return r


def by_target(records):
    out = {}
    for r in records:
        out.setdefault(r["target"], []).append(r)
    return out


# ---- the correct implementation ---------------------------------------------------------------

@pytest.fixture(scope="module")
def correct(tmp_path_factory):
    return audit(EXAMPLES / "layers_correct.py", tmp_path_factory.mktemp("correct"), "--convention", "cs231n", *FAST)


@pytest.mark.xdist_group("audit-correct")
def test_correct_file_passes_every_function(correct):
    assert correct.returncode == 0, correct.stdout + correct.stderr
    targets = by_target(correct.records)
    assert set(targets) == CS231N_TARGETS
    for name, recs in targets.items():
        assert all(r["status"] in ("pass", "kink") for r in recs), (name, [r["message"] for r in recs])
        assert sum(r["examples"] for r in recs) > 0, name
        assert all(r["target"] == name and r["audited"] == "layers_correct.py" for r in recs)


# ---- correct code written the way students write it ---------------------------------------------

@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    # float32: where the float64 np.zeros allocations are another dtype than the inputs
    return audit(EXAMPLES / "layers_realistic.py", tmp_path_factory.mktemp("realistic"), "--convention", "cs231n",
                 "--profile", "ci", "--oracles", "torch", "--dtypes", "float32", "--fail-on", "fail")


@pytest.mark.xdist_group("audit-realistic")
def test_realistic_correct_code_has_no_fail_only_named_warnings_and_one_unstable(realistic):
    assert realistic.returncode == 0, realistic.stdout + realistic.stderr  # --fail-on fail
    recs = realistic.records
    assert set(by_target(recs)) == CS231N_TARGETS
    assert not [r for r in recs if r["severity"] == "fail"], [r["message"] for r in recs if r["severity"] == "fail"]
    unstable = {r["target"] for r in recs if r["severity"] == "unstable"}
    assert unstable == {"softmax_loss"}, unstable
    for r in recs:
        if r["severity"] == "unstable":
            # its max shift is right: the log of a probability that underflows to 0 is what breaks
            assert "log-softmax" in r["message"] and "subtract each row's max" not in r["message"], r["message"]
    hazards = {(r["target"], h["kind"]) for r in recs for h in r["hazards"]}
    assert {("relu_backward", "mutation"), ("lstm_step_backward", "mutation"), ("conv_backward_naive", "dtype"),
            ("dropout_backward", "dtype")} <= hazards, sorted(hazards)
    assert all(r["severity"] == "warning" for r in recs if r["hazards"] and r["status"] == "pass")


# ---- realistic student mistakes ---------------------------------------------------------------

# target -> (kind of the fail, pattern expected or None): each bug must be flagged on its own function
BUGS = {
    "affine_backward": ("gradient", "constant_factor"),  # db = mean instead of sum: factor 1/N
    "softmax_loss": ("nonfinite", None),  # no max shift: NaN in the overflow regime
    "svm_loss": ("forward", None),  # the correct class's margin counted
    "batchnorm_backward": ("gradient", None),  # mean and variance treated as constants
    "batchnorm_backward_alt": ("gradient", None),  # the variance path dropped
    "layernorm_backward": ("gradient", None),  # sums over the batch axis
    "dropout_backward": ("gradient", "constant_factor"),  # the 1/p forgotten
    "conv_backward_naive": ("gradient", None),  # windows without the stride
    "max_pool_backward_naive": ("gradient", "credit_at_ties"),  # every tied maximum gets dout
    "rnn_step_backward": ("gradient", None),  # tanh' of prev_h
    "rnn_backward": ("gradient", "timestep"),  # off by one: t = 0 skipped
    "lstm_step_backward": ("gradient", None),  # gates stacked in the wrong order
    "lstm_backward": ("gradient", None),  # the cell state's gradient not carried
    "word_embedding_backward": ("gradient", "overwrite"),  # dW[x] += dout drops repeated words
    "temporal_softmax_loss": ("gradient", None),  # the mask not applied to dx
    "spatial_batchnorm_backward": (None, None),  # NCHW reshaped without moving C last
}


@pytest.fixture(scope="module")
def buggy(tmp_path_factory):
    report = tmp_path_factory.mktemp("buggy")
    r = audit(EXAMPLES / "layers_buggy.py", report, "--convention", "cs231n", *FAST)
    r.report = report
    return r


@pytest.mark.xdist_group("audit-buggy")
def test_buggy_file_exits_1_and_the_correct_function_passes(buggy):
    assert buggy.returncode == 1, buggy.stderr
    assert all(r["status"] == "pass" for r in by_target(buggy.records)["temporal_affine_backward"])
    assert "FAIL:" in buggy.stdout and "Traceback" not in buggy.stdout + buggy.stderr


@pytest.mark.xdist_group("audit-buggy")
def test_a_backward_writing_into_dout_is_a_mutation_warning_on_its_function(buggy):
    # dx = dout; dx[x <= 0] = 0: the values are right, the caller's dout is changed: a warning
    # (--strict fails on it), and its search goes on over the whole budget
    recs = by_target(buggy.records)["relu_backward"]
    assert recs and all(r["status"] == "pass" and r["severity"] == "warning" for r in recs), recs
    for r in recs:
        (hazard,) = [h for h in r["hazards"] if h["kind"] == "mutation"]
        assert hazard["message"].startswith("relu_backward writes into dout"), hazard


@pytest.mark.xdist_group("audit-buggy")
@pytest.mark.parametrize("target", sorted(BUGS))
def test_each_bug_is_flagged_on_its_function(buggy, target):
    kind, pattern = BUGS[target]
    fails = [r for r in by_target(buggy.records)[target] if r["status"] == "fail"]
    assert fails, f"{target} not flagged"
    blamed = [r for r in fails if r["blame"] == "reference"]
    assert blamed, [(r["id"], r["blame"], r["message"]) for r in fails]
    if kind is not None:
        assert any(r["kind"] == kind for r in blamed), [(r["kind"], r["message"]) for r in blamed]
    if pattern is not None:
        assert any(r["pattern"] == pattern for r in blamed), [(r["pattern"], r["message"]) for r in blamed]
    for r in fails:
        assert r["message"].startswith((target, f"forward_mismatch in {target.replace('_backward', '_forward')}",
                                        f"forward_mismatch in {target}")), r["message"]
        assert r["counterexample"] and (buggy.report / r["counterexample"]).is_file()
        assert r["shapes"], r  # the minimal counterexample's shapes


@pytest.mark.xdist_group("audit-buggy")
def test_forward_mismatch_is_named(buggy):
    svm = [r for r in by_target(buggy.records)["svm_loss"] if r["status"] == "fail"]
    assert any(r["kind"] == "forward" and r["message"].startswith("forward_mismatch in svm_loss") for r in svm)
    # under audit finite differences differentiate the catalogue's forward, not the user's: they do
    # not inherit its mistake, and no message says they do
    assert not any("inherit" in r["message"] for r in buggy.records), [r["message"] for r in svm]


@pytest.mark.xdist_group("audit-buggy")
def test_replay_of_an_audit_counterexample(buggy):
    rec = next(r for r in buggy.records if r["target"] == "affine_backward" and r["status"] == "fail")
    assert rec["replay"] == f"gradaudit replay {rec['id']}"
    r = subprocess.run([sys.executable, "-m", "gradaudit", "replay", rec["id"], "--report", str(buggy.report)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "fail: affine_backward vs torch" in r.stdout and "grad[b]" in r.stdout


# ---- code that misbehaves ----------------------------------------------------------------------

MISBEHAVES = {  # target -> what the error message must say
    "relu_backward": ["relu_backward raised NotImplementedError", "\\x1b[2J"],
    "softmax_loss": ["softmax_loss returned None, expected (loss, dx)"],
    "svm_loss": ["svm_loss returned", "expected (loss, dx)"],
    "batchnorm_backward": ["batchnorm_backward: returned 2 values, expected 3 gradients (dx, dgamma, dbeta)"],
    "batchnorm_backward_alt": ["grad[gamma] has shape [1, ", "expected ["],
    "layernorm_backward": ["grad[x] has dtype float32, expected float64"],
    "dropout_backward": ["dropout_forward did not return within 3 s (--timeout 3)"],
    "conv_backward_naive": ["conv_backward_naive returned nan in grad[w] at index", "expected finite values"],
    "max_pool_backward_naive": ["max_pool_backward_naive called sys.exit(3)"],
    "rnn_step_backward": ["died during a call to rnn_step_backward", "exited with status 7"],
    "rnn_backward": ["died during a call to rnn_backward", "SIGSEGV"],
    "lstm_step_backward": ["lstm_step_backward wrote", "MB to stdout/stderr"],
    "temporal_affine_backward": ["grad[b] is NoneType, expected an array of shape"],
}
WELL_BEHAVED = {"affine_backward", "lstm_backward", "word_embedding_backward", "temporal_softmax_loss"}


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory):
    return audit(EXAMPLES / "layers_misbehaving.py", tmp_path_factory.mktemp("misbehaving"), "--convention", "cs231n",
                 *FAST, "--timeout", "3")


@pytest.mark.xdist_group("audit-misbehaving")
@pytest.mark.parametrize("target", sorted(MISBEHAVES))
def test_each_misbehaviour_is_an_error_naming_the_function(misbehaving, target):
    recs = by_target(misbehaving.records)[target]
    assert recs and all(r["status"] == "error" for r in recs), [(r["status"], r["message"]) for r in recs]
    for r in recs:
        for needle in MISBEHAVES[target]:
            assert needle in r["message"], r["message"]


@pytest.mark.xdist_group("audit-misbehaving")
def test_good_functions_still_pass_among_misbehaving_ones(misbehaving):
    targets = by_target(misbehaving.records)
    assert misbehaving.returncode == 1
    for name in WELL_BEHAVED:
        assert targets[name] and all(r["status"] in ("pass", "kink") for r in targets[name]), name
    assert "spatial_batchnorm_backward" not in targets
    assert "not checked: spatial_batchnorm_backward" in misbehaving.stderr


@pytest.mark.xdist_group("audit-misbehaving")
def test_user_output_never_reaches_the_terminal_unescaped(misbehaving):
    out = misbehaving.stdout + misbehaving.stderr
    assert "\x1b[2J" not in out and "\x1b[1;31mdebug" not in out and "debug step" not in out
    assert "Traceback" not in out and len(out) < 20000
    assert "\\x1b[2J" in out  # shown, escaped
    for r in misbehaving.records:
        assert "\x1b" not in json.dumps(r, ensure_ascii=False)


@pytest.mark.xdist_group("audit-misbehaving")
def test_the_timeout_ends_a_hang(misbehaving):
    # one hang (3 s) and two dead children: far from the 60 s a hang would otherwise cost per check
    assert misbehaving.seconds < 240, misbehaving.seconds


# ---- small files: imports, missing functions, verbose, the dropout probe ----------------------

def _write(tmp_path, name, source):
    p = tmp_path / name
    p.write_text(textwrap.dedent(source))
    return p


def test_a_file_that_exits_at_import_is_one_error(tmp_path):
    f = _write(tmp_path, "layers.py", "import sys\nprint('\\x1b[31mhello')\nsys.exit(4)\n")
    r = audit(f, tmp_path / "rep", "--convention", "cs231n", *FAST, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert [x["status"] for x in r.records] == ["error"]
    assert "called sys.exit(4)" in r.records[0]["message"]
    assert "\x1b[31m" not in r.stdout + r.stderr


def test_a_file_that_hangs_at_import_is_stopped(tmp_path):
    f = _write(tmp_path, "layers.py", "while True:\n    pass\n")
    r = audit(f, tmp_path / "rep", "--convention", "cs231n", *FAST, "--timeout", "2", timeout=120)
    assert r.returncode == 1 and [x["status"] for x in r.records] == ["error"]
    assert "did not return within 2 s" in r.records[0]["message"]


def test_missing_functions_are_skipped_with_a_note_and_verbose_shows_tracebacks(tmp_path):
    f = _write(tmp_path, "layers.py", """
        import numpy as np
        def affine_forward(x, w, b):
            return x.reshape(x.shape[0], -1) @ w + b, (x, w)
        def relu_forward(x):
            return np.maximum(x, 0), x
        def relu_backward(dout, cache):
            return helper_that_does_not_exist(dout)
        """)
    r = audit(f, tmp_path / "rep", "--convention", "cs231n", *FAST, "--verbose", timeout=300)
    targets = by_target(r.records)
    assert [x["status"] for x in targets["affine_backward"]] == ["skip"]
    assert "affine_backward is not defined" in targets["affine_backward"][0]["message"]
    assert all(x["status"] == "error" and "NameError" in x["message"] for x in targets["relu_backward"])
    assert "Traceback" in r.stderr and "helper_that_does_not_exist" in r.stderr  # --verbose
    assert "not checked:" in r.stderr and "softmax_loss" in r.stderr
    assert r.returncode == 1


def test_hostile_text_from_user_code_neither_crashes_nor_reaches_the_terminal(tmp_path):
    f = _write(tmp_path, "layers.py", r"""
        import numpy as np
        def relu_forward(x):
            return np.maximum(x, 0), x
        def relu_backward(dout, cache):
            raise ValueError("\udcff lone surrogate \u202e reversed \x1b]0;title\x07" + "x" * 1_000_000)
        """)
    r = audit(f, tmp_path / "rep", "--convention", "cs231n", *FAST, timeout=300)
    assert r.returncode == 1 and (tmp_path / "rep" / "index.html").is_file()
    out = r.stdout + r.stderr
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out and len(out) < 5000, out[:2000]
    msg = r.records[0]["message"]
    assert "\\udcff" in msg and "\\x1b]0;title\\x07" in msg and len(msg) <= 2001


DROPOUT = """
import numpy as np
def dropout_forward(x, dropout_param):
    p, mode = dropout_param["p"], dropout_param["mode"]
    {seed}
    if mode == "train":
        mask = np.random.rand(*x.shape) {keep}
        return x * mask / p, (dropout_param, mask)
    return x, (dropout_param, None)
def dropout_backward(dout, cache):
    dropout_param, mask = cache
    return dout * mask / dropout_param["p"] if dropout_param["mode"] == "train" else dout
"""


@pytest.mark.parametrize("seed, keep, verdict, needle", [
    ("np.random.seed(dropout_param['seed'])", "< p", "pass", None),
    ("np.random.seed(dropout_param['seed'])", ">= p", "fail", "p is the probability of KEEPING a unit"),
    ("pass", "< p", "error", "draws a different mask on every call with the same dropout_param['seed']"),
], ids=["keep-p", "drop-p", "unseeded"])
def test_dropout_mask_is_recovered_from_the_users_own_forward(tmp_path, seed, keep, verdict, needle):
    f = _write(tmp_path, "drop.py", DROPOUT.format(seed=seed, keep=keep))
    recs = gradaudit.check(str(f), convention="cs231n", oracles=("torch",), report=tmp_path / "rep",
                           raise_on_failure=False)
    assert {r["status"] for r in recs} == {verdict}, [(r["status"], r["message"]) for r in recs]
    if needle:
        assert all(needle in r["message"] for r in recs), [r["message"] for r in recs]


# ---- gradaudit.check from a test ---------------------------------------------------------------

@gradaudit.derivation(source="test", formula="d tanh = 1 − tanh²")
def _tanh_layer(xp, x: ("N", "D"), w: ("D", "M")):
    return xp.tanh(x @ w)


@_tanh_layer.backward
def _tanh_layer_backward(dout, x, w, *, out):
    g = dout * (1 - out ** 2)
    return g @ w.T, x.T @ g


@gradaudit.derivation
def _tanh_layer_wrong(xp, x: ("N", "D"), w: ("D", "M")):
    return xp.tanh(x @ w)


@_tanh_layer_wrong.backward
def _tanh_layer_wrong_backward(dout, x, w, *, out):
    g = dout * (1 - out)  # wrong: tanh' = 1 − tanh²
    return g @ w.T, x.T @ g


def test_check_passes_a_right_derivation_on_every_oracle(tmp_path):
    recs = gradaudit.check(_tanh_layer, dtypes=("float64", "float32"), report=tmp_path)
    assert {r["oracle"] for r in recs} == {"torch", "jax", "numeric"}
    assert all(r["status"] == "pass" and r["target"] == "_tanh_layer_backward" for r in recs)


def test_check_raises_with_the_failure_messages(tmp_path):
    with pytest.raises(AssertionError) as e:
        gradaudit.check(_tanh_layer_wrong, oracles=("torch",), report=tmp_path)
    text = str(e.value)
    assert "_tanh_layer_wrong_backward vs torch" in text and "blame=reference" in text and "gradaudit replay" in text


def test_derivation_shapes_are_consistent_and_distinct():
    from hypothesis import given, settings

    @given(_tanh_layer.inputs("typical", "full"))
    @settings(max_examples=30, database=None)
    def run(case):
        n, d = case.arrays["x"].shape
        assert case.arrays["w"].shape[0] == d
        assert d != case.arrays["w"].shape[1] and n != d  # distinct symbols, distinct sizes

    run()


def test_derivation_shapes_in_the_ci_profile_are_two_distinct_geometries():
    from hypothesis import given, settings

    seen = set()

    @given(_tanh_layer.inputs("typical", "narrow"))
    @settings(max_examples=30, database=None)
    def run(case):
        seen.add((case.arrays["x"].shape, case.arrays["w"].shape))

    run()
    assert seen == {((1, 2), (2, 3)), ((2, 3), (3, 4))}  # N, D, M distinct: the smallest, then all above 1


def test_derivation_rejects_what_cannot_be_drawn():
    with pytest.raises(TypeError, match="annotate it with a shape tuple"):
        @gradaudit.derivation
        def bad(xp, x):
            return x
    with pytest.raises(TypeError, match="keyword-only"):
        @gradaudit.derivation
        def bad2(xp, x: ("N",), y: gradaudit.labels("N", classes=3)):
            return x


def test_derivation_files_are_found_without_convention(tmp_path):
    f = _write(tmp_path, "mynotes.py", '''
        import gradaudit

        @gradaudit.derivation(source="my notes § 1")
        def square(xp, x: ("N",)):
            return x * x

        @square.backward
        def square_backward(dout, x):
            return 2 * x * dout
        ''')
    r = audit(f, tmp_path / "rep", *FAST, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {(x["target"], x["op"], x["source"], x["status"]) for x in r.records} == {
        ("square_backward", "square", "my notes § 1", "pass")}


def test_xp_forward_runs_under_each_framework_and_keeps_the_jit_cache_apart():
    # two derivations with the same op name must not share a JAX compile
    import oracles
    from properties.spec import Case

    @gradaudit.derivation
    def f(xp, x: ("N",)):
        return x * 2

    @f.backward
    def f_backward(dout, x):
        return 2 * dout

    @gradaudit.derivation
    def g(xp, x: ("N",)):  # noqa: F811  (same shapes, different function)
        return x * 3

    @g.backward
    def g_backward(dout, x):
        return 3 * dout

    g_target = g.target()
    case = Case({"x": np.array([1.0, 2.0])})
    for oracle in ("torch", "jax"):
        for d, want in ((f, 2.0), (g, 3.0)):
            t = d.target() if d is f else g_target
            res = oracles.get(oracle).vjp(t.oracle_forward(oracle), case.arrays, {}, (np.ones(2),),
                                          dtype="float64", device="cpu")
            assert np.allclose(res.grads["x"], want), (oracle, d.name)


JUDGE_IMPORTS = """
import json, sys
from gradaudit.cli import main
code = main(sys.argv[1:])
print(json.dumps({"exit": code, "imported": sorted(m for m in ("torch", "jax") if m in sys.modules)}))
"""


def test_a_derivation_audit_judge_never_imports_the_frameworks(tmp_path):
    """A derivation's frameworks run in the audit child: the judge neither imports torch nor JAX (seconds
    of CPU beside the child's own import), and its records carry the child's device names and precision
    flags, as the child set them up (--allow-tf32 here, which changes the flags both frameworks report)."""
    src = tmp_path / "tanh.py"
    src.write_text(textwrap.dedent("""
        import numpy as np
        import gradaudit

        @gradaudit.derivation
        def tanh(xp, x: ("N", 3)):
            return xp.tanh(x)

        @tanh.backward
        def tanh_backward(dout, x):
            return dout * (1 - np.tanh(x) ** 2)
        """))
    r = subprocess.run([sys.executable, "-c", JUDGE_IMPORTS, "audit", str(src), "--report", str(tmp_path / "rep"),
                        "--profile", "ci", "--dtypes", "float64", "--devices", "cpu,cuda", "--allow-tf32", "-q"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "CI": "1"})
    said = json.loads(r.stdout.strip().splitlines()[-1])
    assert said == {"exit": 0, "imported": []}, (said, r.stdout[-2000:], r.stderr[-2000:])
    records = [json.loads(x) for x in (tmp_path / "rep" / "results.jsonl").read_text().splitlines()]
    by_side = {(x["oracle"], x["device"]): x for x in records}
    assert by_side[("torch", "cpu")]["flags"] == {"tf32_matmul": True, "tf32_cudnn": True}
    assert by_side[("jax", "cpu")]["flags"] == {"jax_matmul_precision": "tensorfloat32"}
    assert all(by_side[(o, "cpu")]["status"] == "pass" and by_side[(o, "cpu")]["device_name"] for o in ("torch", "jax"))
    import torch

    cuda = by_side[("torch", "cuda")]
    if torch.cuda.is_available():  # the child's GPU, named as torch names it
        assert cuda["status"] == "pass" and cuda["device_name"] == torch.cuda.get_device_name(0)
    else:  # skipped with the reason the child's torch gave
        assert cuda["status"] == "skip" and "no CUDA device" in cuda["message"], cuda
