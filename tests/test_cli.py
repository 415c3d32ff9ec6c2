"""The command line as scripts and users rely on it: exit codes, one-line errors, records, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradaudit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DESIGN_KEYS = {"target", "op", "oracle", "device", "dtype", "regime", "status", "kind", "blame", "examples",
               "max_abs_err", "max_rel_err", "max_ulp", "pattern", "counterexample", "replay", "message"}


def gradaudit(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "gradaudit", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def n_regimes(op):
    from properties import catalogue

    return len(catalogue.load()[op].regimes)


def records(report_dir):
    return [json.loads(line) for line in (Path(report_dir) / "results.jsonl").read_text().splitlines()]


def test_list_json_names_every_op_with_family_source_regimes(capsys):
    assert main(["list", "--json"]) == 0
    ops = json.loads(capsys.readouterr().out)
    names = {o["name"] for o in ops}
    assert {"affine", "relu", "softmax_cross_entropy"} <= names
    for o in ops:
        assert o["family"] and o["source"] and o["regimes"], o


@pytest.mark.parametrize("args, needle", [
    (["run", "--ops", "affine,nope"], "unknown op 'nope'; accepted:"),
    (["run", "--oracles", "tensorflow"], "unknown oracle 'tensorflow'; accepted: torch, jax, numeric"),
    (["run", "--devices", "tpu"], "unknown device 'tpu'; accepted: cpu, cuda"),
    (["run", "--dtypes", "float16"], "unknown dtype 'float16'; accepted: float64, float32"),
    (["run", "--shard", "3/2"], "--shard 3/2: need 1 <= i <= n"),
    (["run", "--shard", "x"], "--shard must look like i/n"),
    (["run", "--examples", "0"], "--examples must be at least 1"),
    (["report", "/no/such/results.jsonl"], "no such results file"),
    (["replay", "no-such-id"], "no counterexample"),
])
def test_bad_usage_is_one_line_and_exit_2(args, needle, capsys, tmp_path):
    assert main([*args, *(["--report", str(tmp_path)] if args[0] in ("run", "replay") else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_unwritable_report_directory_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--ops", "relu", "--report", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_malformed_results_line_names_the_line(tmp_path, capsys):
    f = tmp_path / "results.jsonl"
    f.write_text('{"id": "a-torch-cpu-float64-typical", "op": "a", "oracle": "torch", "device": "cpu", '
                 '"dtype": "float64", "regime": "typical", "status": "pass", "examples": 1}\n{not json\n{}\n')
    assert main(["report", str(f), "--report", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert ":2" in err and "Traceback" not in err


def test_run_writes_design_records_and_report(tmp_path):
    r = gradaudit("run", "--ops", "affine,relu", "--oracles", "numeric", "--profile", "ci",
                  "--report", str(tmp_path), "--junit", str(tmp_path / "junit.xml"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout)
    assert summary["ok"] is True
    recs = records(tmp_path)
    assert len(recs) == 2 * (n_regimes("affine") + n_regimes("relu"))  # dtypes x regimes
    for rec in recs:
        assert DESIGN_KEYS <= rec.keys()
        assert rec["status"] in ("pass", "kink") and rec["examples"] > 0
    assert (tmp_path / "index.html").is_file() and (tmp_path / "junit.xml").is_file()
    assert json.loads((tmp_path / "run.json").read_text())["finished"]


def test_cuda_cells_skip_cleanly_without_a_gpu(tmp_path):
    r = gradaudit("run", "--ops", "relu", "--oracles", "torch,numeric", "--devices", "cpu,cuda",
                  "--dtypes", "float64", "--profile", "ci", "--report", str(tmp_path))
    recs = records(tmp_path)
    cuda = [x for x in recs if x["device"] == "cuda"]
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the skip path is not reachable")
    assert r.returncode == 0, r.stdout + r.stderr
    assert cuda and all(x["status"] == "skip" and "CUDA" in x["message"] for x in cuda)
    assert any(x["device"] == "cpu" and x["status"] in ("pass", "kink") for x in recs)


def test_missing_framework_is_a_skip_with_its_reason(tmp_path):
    # torch made unimportable in the child: its cells skip, jax and numeric still run
    code = ("import sys; sys.modules['torch'] = None; from gradaudit.cli import main; "
            f"sys.exit(main(['run', '--ops', 'affine', '--dtypes', 'float64', '--profile', 'ci', '--report', {str(tmp_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    recs = records(tmp_path)
    torch_cells = [x for x in recs if x["oracle"] == "torch"]
    assert torch_cells and all(x["status"] == "skip" and "torch cannot be imported" in x["message"] for x in torch_cells)
    assert all(x["status"] == "pass" for x in recs if x["oracle"] in ("jax", "numeric"))


def test_same_seed_same_verdicts_and_figures(tmp_path):
    runs = []
    for k in range(2):
        r = gradaudit("run", "--ops", "softmax_cross_entropy", "--oracles", "torch,numeric", "--dtypes", "float32",
                      "--profile", "dev", "--examples", "6", "--seed", "11", "--report", str(tmp_path / str(k)))
        assert r.returncode == 0, r.stderr
        runs.append([{k2: v for k2, v in x.items() if k2 != "seconds"} for x in records(tmp_path / str(k))])
    assert runs[0] == runs[1]


def test_kill_minus_9_keeps_finished_cells_and_resume_finishes(tmp_path):
    args = ["run", "--ops", "affine,relu,softmax_cross_entropy", "--oracles", "torch,numeric", "--profile", "ci",
            "--report", str(tmp_path)]
    p = subprocess.Popen([sys.executable, "-m", "gradaudit", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    results = tmp_path / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 3):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = records(tmp_path)  # every line is valid JSON
    assert len(before) >= 3
    assert gradaudit("report", str(results), "--report", str(tmp_path / "partial")).returncode == 0
    r = gradaudit(*args, "--resume")
    assert r.returncode == 0, r.stderr
    after = records(tmp_path)
    ids = [x["id"] for x in after]
    expected = 2 * 2 * sum(n_regimes(op) for op in ("affine", "relu", "softmax_cross_entropy"))  # oracles x dtypes
    assert len(ids) == len(set(ids)) == expected  # no cell done twice, none missing
    # the finished groups were kept, not redone; a group the kill cut between its two oracles' records
    # reran whole (tests/test_faults.py: resume is exact)
    group = lambda x: (x["target"], x["dtype"], x["regime"])  # noqa: E731
    whole = [x for x in before if sum(group(y) == group(x) for y in before) == 2]
    assert len(whole) >= 2 and after[:len(whole)] == whole


@pytest.mark.parametrize("extra, why", [(["--profile", "ci"], "derandomized"),
                                        (["--profile", "dev", "--seed", "3"], "--seed")])
def test_an_example_database_that_cannot_be_used_is_a_warning(tmp_path, extra, why):
    r = gradaudit("run", "--ops", "relu", "--oracles", "numeric", "--dtypes", "float64", "--examples", "2",
                  "--example-db", str(tmp_path / "db"), "--report", str(tmp_path / "r"), *extra)
    assert r.returncode == 0, r.stderr
    assert "warning: --example-db" in r.stderr and why in r.stderr
    assert not (tmp_path / "db").exists()  # and indeed nothing was written there


def test_an_example_database_in_use_is_not_warned_about(tmp_path):
    r = gradaudit("run", "--ops", "relu", "--oracles", "numeric", "--dtypes", "float64", "--examples", "2",
                  "--profile", "dev", "--example-db", str(tmp_path / "db"), "--report", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
