"""A CLI that guides: --version, help for every option, -k to pick functions, progress while a run
goes (plain lines in a CI log, a live k/N line on a terminal, nothing with --quiet), and the seed of
an unseeded run recorded and shown so that it can be replayed."""
import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradaudit import __version__
from gradaudit.cli import build_parser
from gradaudit.progress import Progress
from gradaudit.selection import KeywordError, matcher, select

ROOT = Path(__file__).resolve().parents[1]


def gradaudit(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "gradaudit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "CI": ""})


def test_version():
    r = gradaudit("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gradaudit {__version__}"


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in {"gradaudit": parser, **sub.choices}.items():
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, f"options without help: {missing}"


# ---- -k ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, names, want", [
    ("conv", ["conv_backward_naive"], True),
    ("CONV", ["conv_backward_naive"], True),
    ("batchnorm and not spatial", ["spatial_batchnorm_backward"], False),
    ("batchnorm and not spatial", ["batchnorm_backward_alt"], True),
    ("affine or relu", ["relu_backward"], True),
    ("not (affine or relu)", ["relu_backward"], False),
    ("lstm and step", ["lstm_backward", "lstm_forward"], False),
])
def test_keyword_expressions(expr, names, want):
    assert matcher(expr)(names) is want


@pytest.mark.parametrize("bad", ["", "a and", "(a", "a b", "and a"])
def test_keyword_syntax_errors_say_where(bad):
    with pytest.raises(KeywordError, match="-k"):
        matcher(bad)


def test_select_matches_the_forward_too():
    jobs = [{"target": "conv_backward_naive", "forward": "conv_forward_naive"},
            {"target": "relu_backward", "forward": "relu_forward"}]
    assert [j["target"] for j in select(jobs, "conv_forward")] == ["conv_backward_naive"]
    assert select(jobs, None) == jobs


# ---- progress ---------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _append(path, *statuses):
    with open(path, "a") as f:
        for s in statuses:
            f.write(json.dumps({"status": s}) + "\n")


def test_progress_off_a_terminal_prints_at_each_group_and_every_ten_seconds(tmp_path):
    results, out, clock = tmp_path / "results.jsonl", io.StringIO(), Clock()
    p = Progress(results, 6, live=False, stream=out, clock=clock)
    clock.t = 3
    p.tick()  # nothing yet, and not 10 s: quiet
    assert out.getvalue() == ""
    _append(results, "pass", "fail")  # a group ended
    p.tick()
    assert out.getvalue().splitlines()[-1] == "gradaudit: 2/6 cells · 1 failing · ETA 6 s"
    clock.t = 12.9
    p.tick()
    assert len(out.getvalue().splitlines()) == 1
    clock.t = 13.1  # 10 s without a group: a line anyway (a long group, still running)
    p.tick()
    assert len(out.getvalue().splitlines()) == 2
    with open(results, "a") as f:
        f.write('{"status": "pa')  # a record half written is not counted
    p.tick()
    assert p.cells == 2


def test_progress_on_a_terminal_redraws_one_line(tmp_path):
    results, out, clock = tmp_path / "results.jsonl", io.StringIO(), Clock()
    p = Progress(results, 4, live=True, stream=out, clock=clock)
    _append(results, "pass")
    clock.t = 10
    p.tick()
    assert out.getvalue() == "\r\x1b[Kgradaudit: 1/4 cells · ETA 30 s"
    assert "\n" not in out.getvalue()


def test_run_in_a_ci_log_shows_progress_and_the_seed_to_replay_it(tmp_path):
    """`gradaudit run 2>&1 | cat`: progress lines while it runs; an unseeded dev run draws a seed,
    records it in run.json and prints it."""
    r = gradaudit("run", "--ops", "relu", "--profile", "dev", "--examples", "2", "--oracles", "numeric",
                  "--dtypes", "float64", "--report", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("gradaudit: ") and "cells" in ln]
    assert lines[0].startswith("gradaudit: 0/2 cells") and lines[-1].startswith("gradaudit: 2/2 cells"), r.stderr
    seed = json.loads((tmp_path / "r" / "run.json").read_text())["seed"]
    assert isinstance(seed, int) and f"rerun with --seed {seed}" in r.stdout
    quiet = gradaudit("run", "--ops", "relu", "--profile", "ci", "--examples", "2", "--oracles", "numeric",
                      "--dtypes", "float64", "--report", tmp_path / "q", "--quiet")
    assert quiet.returncode == 0 and "cells ·" not in quiet.stderr and "/2 cells" not in quiet.stderr
    assert json.loads((tmp_path / "q" / "run.json").read_text())["seed"] is None  # ci: derandomized


def test_audit_k_checks_only_the_functions_it_names(tmp_path):
    r = gradaudit("audit", ROOT / "tests" / "students" / "derivation_factors.py", "-k", "wave", "--profile", "ci",
                  "--oracles", "torch", "--dtypes", "float64", "--report", tmp_path / "k")
    records = [json.loads(x) for x in (tmp_path / "k" / "results.jsonl").read_text().splitlines()]
    assert {rec["target"] for rec in records} == {"wave_backward"}, r.stderr
    assert r.returncode == 1 and "is 1/π times the right one" in r.stdout


# ---- replay ---------------------------------------------------------------------------------------

def test_replay_says_plainly_that_a_passing_cell_has_no_counterexample(tmp_path):
    from reports.records import RecordSink, new_record

    with RecordSink(tmp_path / "results.jsonl") as sink:
        sink.write(new_record(op="relu", oracle="torch", device="cpu", dtype="float64", regime="typical",
                              status="pass", examples=12, id="relu-torch-cpu-float64-typical"))
        sink.write(new_record(op="relu", oracle="jax", device="cpu", dtype="float64", regime="typical",
                              status="skip", message="jax is not installed", id="relu-jax-cpu-float64-typical"))
    r = gradaudit("replay", "relu-torch-cpu-float64-typical", "--report", tmp_path)
    assert r.returncode == 2 and "has no counterexample to replay: it passed (12 examples agree)" in r.stderr
    r = gradaudit("replay", "relu-jax-cpu-float64-typical", "--report", tmp_path)
    assert "it was skipped, never checked: jax is not installed" in r.stderr
    r = gradaudit("replay", "nope", "--report", tmp_path)
    assert f"no counterexample 'nope' in '{tmp_path}'" in r.stderr
