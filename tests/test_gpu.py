"""The device axis. Real GPU checks are marked `gpu` and skip cleanly without CUDA; the CPU-vs-GPU
differential's plumbing is tested everywhere by standing the CPU in for the GPU."""
import numpy as np
import pytest

import oracles
from properties import catalogue
from properties.config import RunConfig
from properties.devices import device_figures
from properties.evaluate import evaluate
from properties.runner import run_target_cells
from properties.session import apply_precision
from properties.spec import Case
from properties.target import Target
from reports.records import RecordSink

CATALOGUE = catalogue.load()


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """torch's 'cuda' side runs on the CPU: the differential must then find perfect agreement."""
    torch_oracle = oracles.get("torch")
    real_vjp, real_check = torch_oracle.vjp, torch_oracle.check_available
    monkeypatch.setattr(torch_oracle, "vjp", lambda t, a, p, d, *, dtype, device: real_vjp(t, a, p, d, dtype=dtype, device="cpu"))
    monkeypatch.setattr(torch_oracle, "check_available", lambda device: real_check("cpu"))


def test_cpu_gpu_differential_and_spread_are_recorded(cpu_as_cuda):
    pytest.importorskip("torch")
    spec = CATALOGUE["affine"]
    rng = np.random.default_rng(0)
    case = Case({"x": rng.standard_normal((3, 2, 2)), "w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)})
    ev = evaluate(spec, Target.reference(spec), case, "float32", [("torch", "cpu"), ("torch", "cuda")])
    figs = device_figures(Target.reference(spec), ev, ("torch", "cuda"))
    assert figs["run_to_run_spread"] == 0.0
    assert figs["cpu_gpu"]["agree"] is True and figs["cpu_gpu"]["max_abs_err"] == 0.0
    assert device_figures(Target.reference(spec), ev, ("torch", "cpu")) == {}


def test_cuda_records_carry_the_differential(cpu_as_cuda, tmp_path):
    pytest.importorskip("torch")
    spec = CATALOGUE["relu"]
    cfg = RunConfig(profile="ci", oracles=("torch",), devices=("cpu", "cuda"), dtypes=("float32",), report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    recs = run_target_cells(spec, Target.reference(spec), spec.inputs, ("typical",), cfg, sink)
    sink.close()
    cuda = [r for r in recs if r["device"] == "cuda"]
    assert cuda and cuda[0]["status"] == "pass" and cuda[0]["cpu_gpu"]["agree"] is True
    assert "tf32_matmul" in cuda[0]["flags"] and cuda[0]["flags"]["tf32_matmul"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="no CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("op", sorted(CATALOGUE))
def test_catalogue_passes_on_gpu_with_tf32_off(op, tmp_path):
    spec = CATALOGUE[op]
    cfg = RunConfig(profile="ci", oracles=("torch", "jax"), devices=("cpu", "cuda"), report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    recs = run_target_cells(spec, Target.reference(spec), spec.inputs, spec.regimes, cfg, sink)
    sink.close()
    bad = [r for r in recs if r["status"] in ("fail", "error")]
    assert not bad, [r["message"] for r in bad]
    assert any(r["device"] == "cuda" and r["status"] in ("pass", "kink") for r in recs)


def _tf32_like_cuda(monkeypatch, tf32_on: bool):
    """torch's 'cuda' side runs on the CPU with a relative error of 1e-3 in every result (what TF32
    does to a float32 matmul), and reports the TF32 flags as given."""
    torch_oracle = oracles.get("torch")
    real_vjp, real_check, real_flags = torch_oracle.vjp, torch_oracle.check_available, torch_oracle.flags

    def vjp(t, a, p, d, *, dtype, device):
        r = real_vjp(t, a, p, d, dtype=dtype, device="cpu")
        if device == "cuda":
            r.grads = {n: g * np.asarray(1 + 1e-3, g.dtype) for n, g in r.grads.items()}
        return r

    monkeypatch.setattr(torch_oracle, "vjp", vjp)
    monkeypatch.setattr(torch_oracle, "check_available", lambda device: real_check("cpu"))
    monkeypatch.setattr(torch_oracle, "flags", lambda: dict(real_flags(), tf32_matmul=tf32_on, tf32_cudnn=tf32_on))


@pytest.mark.parametrize("tf32_on", [True, False])
def test_a_tf32_sized_gpu_error_is_named_only_when_tf32_is_on(monkeypatch, tmp_path, tf32_on):
    pytest.importorskip("torch")
    _tf32_like_cuda(monkeypatch, tf32_on)
    spec = CATALOGUE["affine"]
    cfg = RunConfig(profile="ci", oracles=("torch",), devices=("cpu", "cuda"), dtypes=("float32",), report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    recs = run_target_cells(spec, Target.reference(spec), spec.inputs, ("typical",), cfg, sink)
    sink.close()
    cpu, cuda = ([r for r in recs if r["device"] == d][0] for d in ("cpu", "cuda"))
    assert cpu["status"] == "pass"
    assert cuda["status"] == "fail" and cuda["cpu_gpu"]["agree"] is False
    if tf32_on:
        assert cuda["pattern"] == "tf32" and cuda["blame"] == "precision" and "TF32" in cuda["message"]
    else:  # without TF32 the same gap is the GPU oracle's own: never excused as TF32
        assert cuda["pattern"] != "tf32" and cuda["blame"] == "oracle:torch"


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="no CUDA device (torch.cuda.is_available() is False)")
def test_tf32_on_gpu_is_named_not_blamed_on_the_derivation(tmp_path):
    spec = CATALOGUE["affine"]
    cfg = RunConfig(profile="ci", oracles=("torch", "jax"), devices=("cpu", "cuda"), dtypes=("float32",),
                    report_dir=tmp_path, allow_tf32=True)
    apply_precision(cfg)  # what `gradaudit run --allow-tf32` does before its cells
    sink = RecordSink(tmp_path / "results.jsonl")
    try:
        recs = run_target_cells(spec, Target.reference(spec), spec.inputs, spec.regimes, cfg, sink)
    finally:
        sink.close()
        for name in ("torch", "jax"):
            oracles.get(name).set_tf32(False)
    fails = [r for r in recs if r["status"] == "fail"]
    assert fails, "TF32 changed nothing: the float32 affine cells all passed with TF32 on"
    assert all(r["device"] == "cuda" and r["pattern"] == "tf32" and r["blame"] == "precision" for r in fails), \
        [(r["id"], r["pattern"], r["blame"]) for r in fails]


def test_the_differential_holds_devices_to_the_ops_own_tolerance(monkeypatch, tmp_path):
    """layernorm on near-constant rows amplifies float32 rounding by |x|/sigma on any device; two
    implementations that each pass against the reference must not be called a device difference.
    JAX on the CPU stands in for torch on the GPU: a different implementation, rounding differently."""
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    torch_oracle, jax_oracle = oracles.get("torch"), oracles.get("jax")
    real_vjp, real_check = torch_oracle.vjp, torch_oracle.check_available
    # torch's forward of the op is named as the op: JAX's forward of the same op stands in for it
    monkeypatch.setattr(torch_oracle, "vjp", lambda f, a, p, d, *, dtype, device: (
        jax_oracle.vjp(jax_oracle.builtin(f.__name__), a, p, d, dtype=dtype, device="cpu") if device == "cuda"
        else real_vjp(f, a, p, d, dtype=dtype, device=device)))
    monkeypatch.setattr(torch_oracle, "check_available", lambda device: real_check("cpu"))
    spec = CATALOGUE["layernorm"]
    cfg = RunConfig(profile="ci", oracles=("torch",), devices=("cpu", "cuda"), dtypes=("float32",), report_dir=tmp_path)
    sink = RecordSink(tmp_path / "results.jsonl")
    recs = run_target_cells(spec, Target.reference(spec), spec.inputs, ("near_constant", "typical"), cfg, sink)
    sink.close()
    cuda = [r for r in recs if r["device"] == "cuda"]
    assert cuda and all(r["status"] == "pass" for r in recs), [r["message"] for r in recs]
    assert all(r["cpu_gpu"]["agree"] for r in cuda), [r["cpu_gpu"] for r in cuda]
