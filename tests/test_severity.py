"""Severities and the exit status (#12): a record's `severity` (fail | unstable | warning | null) and
`hazards`, what `--fail-on` / `--strict` make of them, and "nothing checked" (exit 5). Judged on
records written by hand through `gradaudit report`, so no search runs here.
"""
import json

import pytest

from gradaudit import cli
from reports.records import failing, load_records, new_record, severity


def _rec(status, sev, regime="typical", hazards=()):
    return new_record(id=f"op-torch-cpu-float64-{regime}", target="op_backward", op="op", oracle="torch",
                      device="cpu", dtype="float64", regime=regime, status=status, examples=12,
                      message=f"{status}/{sev}", severity=sev, hazards=list(hazards))


def _report(tmp_path, records, *args):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return cli.main(["report", str(src / "results.jsonl"), "--report", str(tmp_path / "out"), *args])


MUTATION = {"kind": "mutation", "message": "op_backward writes into dout in place"}


@pytest.mark.parametrize("records, args, code", [
    ([_rec("pass", None)], [], 0),
    ([_rec("pass", "warning", hazards=[MUTATION])], [], 0),  # a hazard with correct values
    ([_rec("pass", "warning", hazards=[MUTATION])], ["--strict"], 1),
    ([_rec("pass", "warning", hazards=[MUTATION])], ["--fail-on", "warning"], 1),
    ([_rec("fail", "unstable", "overflow")], [], 1),  # default fail,unstable
    ([_rec("fail", "unstable", "overflow")], ["--fail-on", "fail"], 0),  # correctness-only CI
    ([_rec("fail", "fail")], ["--fail-on", "fail"], 1),
    ([_rec("error", "fail")], ["--fail-on", "fail"], 1),
    ([_rec("fail", "unstable", "overflow"), _rec("pass", "warning")], ["--fail-on", "warning"], 1),
])
def test_exit_status_follows_fail_on(tmp_path, capsys, records, args, code):
    assert _report(tmp_path, records, *args) == code


def test_an_unknown_severity_is_a_usage_error(tmp_path, capsys):
    assert _report(tmp_path, [_rec("pass", None)], "--fail-on", "fail,bogus") == cli.EXIT_USAGE
    assert "bogus" in capsys.readouterr().err


def test_nothing_checked_exits_5_with_one_line(tmp_path, capsys):
    skips = [dict(_rec("skip", None), id=f"op-jax-cpu-float64-{r}", oracle="jax", regime=r, examples=0)
             for r in ("typical", "large")]
    assert _report(tmp_path, skips) == cli.EXIT_NOTHING == 5
    err = [line for line in capsys.readouterr().err.splitlines() if "nothing was checked" in line]
    assert len(err) == 1 and "2 cells skipped" in err[0], err


def test_records_without_a_severity_read_as_before():
    # a record written before severities: a fail or an error failed the run, anything else did not
    old = [{"status": "fail"}, {"status": "error"}, {"status": "pass"}, {"status": "kink"}]
    assert [severity(r) for r in old] == ["fail", "fail", None, None]
    assert failing(old) == old[:2]


def test_severity_and_hazards_round_trip_through_the_schema(tmp_path):
    rec = _rec("pass", "warning", hazards=[MUTATION])
    (tmp_path / "results.jsonl").write_text(json.dumps(rec) + "\n")
    back = load_records(tmp_path / "results.jsonl")[0]
    assert back["severity"] == "warning" and back["hazards"] == [MUTATION]
    bad = dict(rec, hazards="mutation")  # the schema's type check covers the new keys
    (tmp_path / "results.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(Exception, match="hazards"):
        load_records(tmp_path / "results.jsonl")


def test_an_audit_of_a_file_with_nothing_to_check_exits_5(tmp_path):
    import subprocess
    import sys

    (tmp_path / "empty.py").write_text("import numpy as np\n")
    r = subprocess.run([sys.executable, "-m", "gradaudit", "audit", str(tmp_path / "empty.py"),
                        "--report", str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "no @gradaudit.derivation functions" in r.stderr and "nothing was checked" in r.stderr
