"""`gradaudit.function` subjects: custom torch.autograd.Functions and jax.custom_vjp / custom_jvp rules.

The examples (examples/functions/: a fused softmax cross-entropy, a LayerNorm and a JAX log-sum-exp,
each with a planted twin) judged from the API, the CLI and the pytest plugin, and what gradcheck and
check_grads miss in them; then each check on a small subject written for it. Lean: the ci profile,
float64 unless the test is about a dtype, and only the checks and oracles a test is about.
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gradaudit
from gradaudit.audit import import_file

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "functions"
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def ex():
    return {name: import_file(EXAMPLES / f"{name}.py") for name in ("softmax_ce", "layernorm", "logsumexp")}


def only(subject, *checks):
    return dataclasses.replace(subject, checks=checks)


def check(subject, tmp_path, **kw):
    kw.setdefault("raise_on_failure", False)
    return gradaudit.check(subject, report=tmp_path, **kw)


# ---- the examples: each twin fails with its blame and named cause; its correct original passes ------

TWINS = {
    # example, correct, twin, the check that catches it, status, pattern, what the message names
    "missing_sum": ("softmax_ce", "softmax_ce", "softmax_ce_unreduced", "vjp", "error",
                            "grad[scale] has shape"),
    "ctx_intermediate": ("layernorm", "layer_norm", "layer_norm_kept", "vjp_of_vjp", "fail", "ctx.rstd, ctx.xhat"),
    "wrong_dtype": ("logsumexp", "lse", "lse_f32", "vjp", "error", "has dtype float32, expected float64"),
}


@pytest.mark.parametrize("pattern", sorted(TWINS))
def test_each_planted_twin_fails_with_its_blame_and_cause_and_its_original_passes(ex, tmp_path, pattern):
    module, good, bad, chk, status, needle = TWINS[pattern]
    ok = check(only(getattr(ex[module], good), chk), tmp_path / "good")
    assert ok and {r["status"] for r in ok} <= {"pass", "skip"}, [r["message"] for r in ok]
    assert any(r["status"] == "pass" and r["oracle"] == "numeric" for r in ok)
    recs = check(only(getattr(ex[module], bad), chk), tmp_path / "bad")
    judged = [r for r in recs if r["status"] != "skip"]
    assert judged and all(r["status"] == status for r in judged), [(r["id"], r["status"]) for r in judged]
    for r in judged:
        assert (r["blame"], r["pattern"]) == ("reference", pattern), r
        assert needle in r["message"] and r["target"].endswith(f".{chk}")
        assert r["explanation"]  # the pattern's sentence (properties.patterns.SENTENCES), what a user reads first
        assert (tmp_path / "bad" / r["counterexample"]).is_file()


def test_gradcheck_and_check_grads_pass_the_planted_twins(ex):
    """The blind spots the examples plant: first-order gradcheck (autograd's engine sums the unreduced
    gradient; the kept intermediates only break the double backward) and check_grads (a float32
    gradient of a float64 input is within its tolerance)."""
    from jax.test_util import check_grads

    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(ex["softmax_ce"].SoftmaxCrossEntropyUnreduced.apply, (logits, scale, labels))
    x = torch.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    g, b = (torch.tensor(rng.standard_normal(4), requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(ex["layernorm"].LayerNormKeptIntermediates.apply, (x, g, b))
    check_grads(ex["logsumexp"].logsumexp_f32, (rng.standard_normal((3, 4)),), order=1, modes=["rev"])


def test_check_raises_naming_the_cause(ex, tmp_path):
    with pytest.raises(AssertionError, match=r"logsumexp_f32.vjp: grad\[x\] has dtype float32, expected float64"):
        gradaudit.check(only(ex["logsumexp"].lse_f32, "vjp"), report=tmp_path)


def test_replay_reruns_a_subjects_counterexample_in_process_or_in_the_child(ex, tmp_path):
    from gradaudit.replay import ReplayError, replay

    recs = check(only(ex["logsumexp"].lse_f32, "vjp"), tmp_path, oracles=("jax",))
    (rec,) = recs
    r = replay(rec["id"], tmp_path, in_process=True)
    assert r.failed and "has dtype float32" in r.verdict.message
    # without in_process, as `gradaudit replay` does: the subject's code in the confined child
    r = replay(rec["id"], tmp_path)
    assert r.failed and "has dtype float32" in r.verdict.message
    with pytest.raises(ReplayError, match="is not there"):
        replay(rec["id"], tmp_path, file=tmp_path / "gone.py")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """gradaudit.check(examples/functions/) as a test runs it: every module-level subject, every check."""
    out = tmp_path_factory.mktemp("check")
    records = gradaudit.check(EXAMPLES, dtypes=("float64",), profile="ci", report=out, raise_on_failure=False)
    return records


@pytest.mark.xdist_group("functions-audit")
def test_check_of_the_folder_passes_the_originals_in_every_check_and_flags_each_twin(audited):
    ops = {}
    for r in audited:
        ops.setdefault(r["op"].split(".")[-1], []).append(r)
    for good in ("SoftmaxCrossEntropy", "LayerNorm", "logsumexp"):
        assert {r["status"] for r in ops[good]} == {"pass"}, [r["message"] for r in ops[good] if r["status"] != "pass"]
        checks = {r["target"].rsplit(".", 1)[1] for r in ops[good]}
        assert "vjp" in checks and len(checks) >= 3
    assert "vjp_of_vjp" in {r["target"].rsplit(".", 1)[1] for r in ops["LayerNorm"]}
    for bad, pattern in (("SoftmaxCrossEntropyUnreduced", "missing_sum"),
                         ("LayerNormKeptIntermediates", "ctx_intermediate"), ("logsumexp_f32", "wrong_dtype")):
        failing = [r for r in ops[bad] if r["status"] in ("fail", "error")]
        assert failing and {(r["blame"], r["pattern"]) for r in failing} == {("reference", pattern)}, bad
        assert all(r["audited"] for r in failing)


@pytest.mark.xdist_group("functions-audit")
def test_records_the_tolerance_mode_and_the_run_to_run_spread(audited):
    for r in audited:
        if r["status"] == "pass":
            assert r["tolerance_mode"] == "policy"
            if r["target"].endswith(".vjp"):
                assert r["target_spread"] == 0.0  # the CPU is deterministic
            else:
                assert r["target_spread"] is None


@pytest.fixture(scope="module")
def cli_audited(tmp_path_factory):
    """`gradaudit audit examples/functions/` as the CLI runs it: every subject's user code in the child."""
    out = tmp_path_factory.mktemp("audit")
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(EXAMPLES), "--profile", "ci", "--dtypes",
                        "float64", "--report", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env={**os.environ, "CI": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr[-3000:]
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()], out


@pytest.mark.xdist_group("functions-audit")
def test_cli_audit_judges_each_subject_as_check_does(audited, cli_audited):
    """`gradaudit audit` runs module-level subjects with their code in the confined child: every cell
    gets the verdict, blame and named cause that gradaudit.check gives it in-process."""
    recs, out = cli_audited

    def verdicts(records):
        return {(r["target"], r["oracle"], r["dtype"], r["regime"]): (r["status"], r["blame"], r["pattern"])
                for r in records}

    assert verdicts(recs) == verdicts(audited)
    assert {r["pattern"] for r in recs if r["status"] in ("fail", "error")} == {"missing_sum", "ctx_intermediate",
                                                                                 "wrong_dtype"}
    assert all((out / r["counterexample"]).is_file() for r in recs if r["status"] in ("fail", "error"))


@pytest.mark.xdist_group("functions-audit")
def test_cli_replay_of_a_subjects_case_runs_it_in_the_child(cli_audited):
    recs, out = cli_audited
    rec = next(r for r in recs if r["target"] == "LayerNormKeptIntermediates.vjp_of_vjp" and r["oracle"] == "numeric")
    r = subprocess.run([sys.executable, "-m", "gradaudit", "replay", rec["id"], "--report", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "CI": "1"})
    assert r.returncode == 1 and "replaying with the recorded file" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "fail: LayerNormKeptIntermediates.vjp_of_vjp vs numeric" in r.stdout


def test_cli_audit_checks_subjects_beside_the_files_derivations(tmp_path):
    """A file with a subject and a derivation: both audited, each with its own verdict (the subject's
    framework is imported by the file itself: `--oracles numeric` loads none for the child)."""
    layer = tmp_path / "layer.py"
    layer.write_text(textwrap.dedent("""
        import gradaudit
        import torch

        class Square(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 2 * x * g

        square = gradaudit.function(Square, checks=("vjp",), x=("N", "D"))

        @gradaudit.derivation
        def tanh_layer(xp, x: ("N", "D"), w: ("D", "M")):
            return xp.tanh(x @ w)

        @tanh_layer.backward
        def tanh_layer_backward(dout, x, w, *, out):
            g = dout * (1 - out)  # wrong: tanh' = 1 - tanh**2
            return g @ w.T, x.T @ g
    """))
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(layer), "--profile", "ci", "--oracles",
                        "numeric", "--report", str(tmp_path / "rep")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, env={**os.environ, "CI": "1"})
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]  # the derivation's finding
    recs = [json.loads(x) for x in (tmp_path / "rep" / "results.jsonl").read_text().splitlines()]
    subject = [x for x in recs if x["family"] == "function"]
    assert subject and {(x["target"], x["status"]) for x in subject} == {("Square.vjp", "pass")}, subject
    assert {x["status"] for x in recs if x["family"] == "derivation"} == {"fail"}


def test_pytest_plugin_report_fails_the_session_on_a_twin(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for var in ("CI", "GRADAUDIT_PROFILE", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(test_lse=textwrap.dedent(f"""
        import dataclasses
        import gradaudit
        from gradaudit.audit import import_file

        ex = import_file({str(EXAMPLES / "logsumexp.py")!r})

        def test_lse(gradaudit_report_dir):
            for s in (ex.lse, ex.lse_f32):  # the failing records alone turn the session red
                gradaudit.check(dataclasses.replace(s, checks=("vjp",)), oracles=("jax", "numeric"),
                                report=gradaudit_report_dir, raise_on_failure=False)
    """))
    import importlib.metadata

    installed = any(ep.name == "gradaudit" for ep in importlib.metadata.entry_points(group="pytest11"))
    load = [] if installed else ["-p", "gradaudit.pytest_plugin"]  # as tests/test_pytest_plugin.py
    r = pytester.runpytest_subprocess(*load, "-p", "no:cacheprovider", "--gradaudit-report", "rep",
                                      "--gradaudit-profile", "ci", timeout=600)
    assert r.ret == pytest.ExitCode.TESTS_FAILED, r.stdout.str()
    recs = [json.loads(x) for x in (pytester.path / "rep" / "results.jsonl").read_text().splitlines()]
    assert {(r["op"], r["status"], r["pattern"]) for r in recs} == {("logsumexp", "pass", None),
                                                                    ("logsumexp_f32", "error", "wrong_dtype")}
    assert (pytester.path / "rep" / "junit.xml").is_file() and (pytester.path / "rep" / "index.html").is_file()


# ---- each check on a subject written for it -------------------------------------------------------

class Square(torch.autograd.Function):
    """x², torch.func-compatible (setup_context), with a forward-mode rule."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 2 * x * t


class SquareHalfJvp(Square):
    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return x * t  # planted: the factor 2 missing from the forward-mode rule only


def test_forward_mode_rule_is_checked_apart_from_the_backward(tmp_path):
    good = check(gradaudit.function(Square, checks=("vjp", "jvp"), x=("N", "D")), tmp_path / "g",
                 oracles=("torch", "numeric"))
    assert {r["status"] for r in good if r["oracle"] != "jax"} == {"pass"}
    recs = check(gradaudit.function(SquareHalfJvp, checks=("vjp", "jvp"), x=("N", "D")), tmp_path / "b",
                 oracles=("torch", "numeric"))
    status = {(r["target"], r["oracle"]): r for r in recs}
    assert status[("SquareHalfJvp.vjp", "torch")]["status"] == "pass"
    bad = status[("SquareHalfJvp.jvp", "torch")]
    assert (bad["status"], bad["blame"], bad["pattern"]) == ("fail", "reference", "constant_factor")


def test_second_order_forward_over_reverse_of_a_torch_func_function(tmp_path):
    recs = check(gradaudit.function(Square, order=2, checks=("jvp_of_vjp",), x=("N",)), tmp_path,
                 oracles=("torch", "numeric"))
    assert {r["status"] for r in recs} == {"pass"} and {r["target"] for r in recs} == {"Square.jvp_of_vjp"}


class Flip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        return g  # planted: the derivative of tanh left out


def model(x, w):  # what a user checks: a network around their Function
    return Flip.apply(x @ w).sum(dim=1)


def test_a_plain_callable_is_judged_with_its_functions_bypassed(tmp_path):
    recs = check(gradaudit.function(model, framework="torch", checks=("vjp",), x=("N", "D"), w=("D", "M")),
                 tmp_path, oracles=("torch", "numeric"))
    judged = {r["oracle"]: r for r in recs if r["status"] != "skip"}
    # autograd of the bypassed primal differentiates tanh itself; with finite differences it blames the rule
    assert judged["torch"]["status"] == "fail" and judged["torch"]["blame"] == "reference"


def test_without_a_reference_the_other_framework_is_a_skip_with_the_reason(tmp_path):
    recs = check(gradaudit.function(Square, checks=("vjp",), x=("N",)), tmp_path)
    jax_side = [r for r in recs if r["oracle"] == "jax"]
    assert jax_side and all(r["status"] == "skip" and "no reference forward" in r["message"] for r in jax_side)


class Noisy(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        # an atomic accumulation's order, as on a GPU: the last bits differ from one run to the next
        # (a relative 1e-15, a few ulps, so that the rounding of the product cannot hide it)
        Noisy.calls += 1
        return 2 * x * g * (1 + 1e-15 * (Noisy.calls % 2))


def test_run_to_run_spread_is_reported_apart_from_the_error(tmp_path):
    recs = check(gradaudit.function(Noisy, checks=("vjp",), x=("N", "D")), tmp_path, oracles=("torch", "numeric"))
    judged = [r for r in recs if r["status"] != "skip"]
    assert {r["status"] for r in judged} == {"pass"}
    assert all(r["target_spread"] > 0 for r in judged)


class NotBatchable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * torch.tensor(g.tolist(), dtype=g.dtype)  # leaves the tensor world: no vmap


def test_batched_gradients_catch_what_first_order_gradcheck_does_not(tmp_path):
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(NotBatchable.apply, (x,))
    recs = check(gradaudit.function(NotBatchable, checks=("vjp", "vjp_batched"), x=("N", "D")), tmp_path,
                 oracles=("torch", "numeric"))
    by = {(r["target"], r["oracle"]): r["status"] for r in recs if r["status"] != "skip"}
    assert by[("NotBatchable.vjp", "torch")] == "pass" and by[("NotBatchable.vjp_batched", "torch")] == "error"


class StridedView(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x.view(-1) ** 2).view(x.shape)  # .view needs a contiguous input

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_non_contiguous_inputs_are_checked(tmp_path):
    recs = check(gradaudit.function(StridedView, checks=("vjp", "vjp_strided"), x=("N", "D")), tmp_path,
                 oracles=("torch", "numeric"))
    by = {(r["target"], r["oracle"]): r for r in recs if r["status"] != "skip"}
    assert by[("StridedView.vjp", "torch")]["status"] == "pass"
    bad = by[("StridedView.vjp_strided", "torch")]
    assert bad["status"] == "error" and "view" in bad["message"]


# ---- low precision --------------------------------------------------------------------------------

class Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class TanhFp8Backward(Tanh):
    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        # planted: the gradient is compressed to float8 (e4m3, 4 significant bits: up to 6% off) on its
        # way back, as for an fp8 all-reduce. (A pass through bfloat16, <0.4% off, is within one float16
        # rounding at the operands' scale, the reference-relative floor: not a finding in float16.)
        return (g * (1 - y * y)).to(torch.float8_e4m3fn).to(g.dtype)


def test_float16_is_judged_reference_relative_and_catches_what_the_policy_would_allow(tmp_path):
    kw = dict(checks=("vjp",), dtypes=("float16",), x=gradaudit.array("N", "D", low=0.5, high=1.5))
    good = check(gradaudit.function(Tanh, **kw), tmp_path / "g", oracles=("torch", "numeric"))
    judged = [r for r in good if r["status"] != "skip"]
    assert {r["status"] for r in judged} == {"pass"}, [r["message"] for r in judged]
    assert {r["tolerance_mode"] for r in judged} == {"reference-relative"}
    bad = check(gradaudit.function(TanhFp8Backward, **kw), tmp_path / "b", oracles=("torch", "numeric"))
    failing = [r for r in bad if r["status"] == "fail"]
    assert failing and all(r["tolerance_mode"] == "reference-relative" for r in failing)
    from gradaudit.replay import load_case
    from properties.tolerances import policy

    for r in failing:  # the policy's float16 tolerance (64 eps sqrt(n): over 6%) would have let it pass
        _, case, douts = load_case(tmp_path / "b" / r["counterexample"])
        x = case.arrays["x"]
        pol = policy("float16", size=x.size, oracle=r["oracle"], dout_max=float(np.abs(douts[0]).max()),
                     input_max=float(np.abs(x).max()))
        assert r["max_abs_err"] <= pol.floor, (r["max_abs_err"], pol)
    assert "reference-relative" in failing[0]["tolerance_source"]


def test_bfloat16_cells_run_and_save_their_case(ex, tmp_path):
    recs = check(only(ex["logsumexp"].lse_f32, "vjp"), tmp_path, dtypes=("bfloat16",), oracles=("jax",))
    (rec,) = recs
    assert (rec["status"], rec["pattern"], rec["dtype"]) == ("error", "wrong_dtype", "bfloat16")
    from gradaudit.replay import load_case

    meta, case, _ = load_case(tmp_path / rec["counterexample"])
    assert meta["dtype"] == "bfloat16" and case.arrays["x"].dtype == np.float64


def test_finite_differences_take_a_step_the_dtype_resolves():
    from oracles import numeric
    from oracles.subject_oracle import finite_differences

    import ml_dtypes

    def square_in_bf16(x):  # a forward that only exists in bfloat16
        return (x.astype(ml_dtypes.bfloat16) ** 2).astype(ml_dtypes.bfloat16)

    x = {"x": np.array([0.75, 1.25, -1.5])}
    res = finite_differences(square_in_bf16, x, {}, (np.ones(3),), compute_dtype="bfloat16")
    assert np.allclose(res.grads["x"], 2 * x["x"], rtol=0.05)
    # the float64 step (6e-6) is far below bfloat16's resolution: x ± h rounds back to x
    fixed = numeric.vjp(lambda x: square_in_bf16(x).astype(np.float64), x, {}, (np.ones(3),), dtype="float64",
                        device="cpu")
    assert np.all(fixed.grads["x"] == 0)


def test_a_tolerance_override_takes_a_condition_number_and_says_so(ex, tmp_path):
    """LayerNorm's double backward in float32 over a near-constant row: the rounding of x − μ, divided by
    σ ~ sqrt(eps), is beyond the policy's float32 tolerance for any correct computation; the example
    declares the catalogue layernorm's condition number |x|/σ, and the records name it."""
    subject = only(ex["layernorm"].layer_norm, "vjp_of_vjp")
    recs = check(subject, tmp_path / "a", dtypes=("float32",))
    assert {r["status"] for r in recs} == {"pass"}, [r["message"] for r in recs if r["status"] != "pass"]
    assert all("condition number |x|/σ" in r["tolerance_source"] for r in recs)
    # a near-constant row (|x|/σ ~ 1e3), given rather than left to the search's luck: the declared
    # condition number passes it, the bare policy fails it
    from gradaudit._subject import adapter, subject_target
    from gradaudit._subject_run import check_inputs, dout_names
    from properties.evaluate import evaluate
    from properties.spec import Case, OpSpec, Tolerance

    rng = np.random.default_rng(0)
    x = np.array([[1.0, 1.0 + 1e-3, 1.0 - 1e-3, 1.0 + 5e-4], [0.3, -1.2, 0.8, 0.1]])
    (dout,) = dout_names(subject, 1)
    case = Case({"x": x, "gamma": rng.standard_normal(4), "beta": rng.standard_normal(4),
                 dout: rng.standard_normal(x.shape)}, {})
    for tolerance, status in ((subject.tolerance, "pass"), (None, "fail")):
        s = dataclasses.replace(subject, tolerance=tolerance)
        spec = OpSpec(name=s.name, family="function", source="test", regimes=("typical",),
                      inputs=check_inputs(s, adapter(s), "vjp_of_vjp"), tolerance=tolerance and Tolerance(*tolerance))
        ev = evaluate(spec, subject_target(s, "vjp_of_vjp", "cpu"), case, "float32", [("torch", "cpu")])
        assert ev.sides[("torch", "cpu")].status == status, (tolerance, ev.sides[("torch", "cpu")].message)


# ---- declaring a subject --------------------------------------------------------------------------

def test_function_rejects_what_it_cannot_check():
    with pytest.raises(TypeError, match="'y' is not an argument"):
        gradaudit.function(Square, x=("N",), y=("N",))
    with pytest.raises(TypeError, match="framework="):
        gradaudit.function(lambda x: x, x=("N",))
    with pytest.raises(ValueError, match="unknown check 'hessian'"):
        gradaudit.function(Square, checks=("hessian",), x=("N",))
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        gradaudit.function(Square, order=3, x=("N",))
    with pytest.raises(TypeError, match=r"tolerance must be \(factor, reason\)"):
        gradaudit.function(Square, x=("N",), tolerance=(2.0, ""))
    with pytest.raises(TypeError, match="no differentiated argument"):
        gradaudit.function(Square, x=gradaudit.labels("N", classes=3))


def test_the_checks_that_apply(ex):
    assert ex["softmax_ce"].softmax_ce.checks == ("vjp", "vjp_strided", "vjp_expanded", "vjp_batched")
    assert ex["layernorm"].layer_norm.checks[-1] == "vjp_of_vjp"  # classic Function: no torch.func
    assert ex["logsumexp"].lse.checks == ("vjp", "vjp_batched", "vjp_of_vjp")  # custom_vjp: no forward mode
    assert gradaudit.function(Square, order=2, x=("N",)).checks == ("vjp", "vjp_strided", "vjp_expanded",
                                                                     "vjp_batched", "jvp", "vjp_of_vjp",
                                                                     "jvp_of_vjp")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without a GPU")
def test_cuda_cells_are_a_clean_skip_without_a_gpu(tmp_path):
    recs = check(gradaudit.function(Square, checks=("vjp",), x=("N",)), tmp_path, oracles=("torch", "numeric"),
                 devices=("cpu", "cuda"))
    on_gpu = [r for r in recs if r["target"] == "Square.vjp@cuda" or r["device"] == "cuda"]
    assert on_gpu and all(r["status"] == "skip" and "CUDA" in r["message"] for r in on_gpu)
    assert {r["status"] for r in recs if r["target"] == "Square.vjp" and r["device"] == "cpu"} == {"pass"}
