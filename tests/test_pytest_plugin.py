"""gradaudit's pytest plugin, driven in a tiny project by pytest's own `pytester` (a fresh pytest
process per run): `--gradaudit-report DIR` writes results.jsonl, index.html and junit.xml; a
failing record fails the session; under xdist every worker's records reach one report rendered once
by the controller; the plugin registers once via entry point or conftest; importing it is light.
"""
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

# A test in the tiny project writes records as the runner does: one O_APPEND write per record.
RECORDS_HELPER = """
    import os
    from reports.records import RecordSink

    def write(report_dir, op, status="pass", message="ok", **more):
        assert report_dir is not None and report_dir.is_absolute()
        sink = RecordSink(report_dir / "results.jsonl")
        sink.write({"target": f"{op}_backward", "op": op, "oracle": "numeric", "device": "cpu",
                    "dtype": "float64", "regime": "typical", "status": status, "examples": 3,
                    "id": f"{op}-numeric-cpu-float64-typical", "message": message,
                    "seconds": 0.01, **more})
        sink.close()
"""


def _entry_point_installed() -> bool:
    return any(ep.name == "gradaudit" for ep in importlib.metadata.entry_points(group="pytest11"))


@pytest.fixture
def project(pytester, monkeypatch):
    """A tiny project that sees this checkout (not necessarily installed) and no outside settings."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for var in ("CI", "GRADAUDIT_PROFILE", "PYTEST_ADDOPTS", "PYTEST_PLUGINS",
                "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(ga_records=textwrap.dedent(RECORDS_HELPER))
    return pytester


def run(pytester, *args):
    # an installed gradaudit loads the plugin through its entry point; a bare checkout needs -p
    load = [] if _entry_point_installed() else ["-p", "gradaudit.pytest_plugin"]
    return pytester.runpytest_subprocess(*load, "-p", "no:cacheprovider", *args, timeout=120)


def _junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    return {k: int(root.get(k)) for k in ("tests", "failures", "errors", "skipped")}


def test_report_dir_gets_results_html_and_junit(project):
    out = project.path / "out"
    out.mkdir()
    # left over from an earlier session: the controller clears results.jsonl once, at the start
    (out / "results.jsonl").write_text(json.dumps({"op": "stale", "oracle": "torch", "device": "cpu",
                                                   "dtype": "float64", "regime": "typical",
                                                   "status": "fail"}) + "\n")
    project.makeconftest("""
        import sys

        def pytest_unconfigure(config):  # after the report is rendered
            with open("modules-at-exit.txt", "w") as f:
                f.write(",".join(m for m in ("torch", "jax") if m in sys.modules))
    """)
    project.makepyfile(test_layers="""
        from gradaudit.pytest_plugin import report_dir, session_profile
        from ga_records import write

        def test_affine(gradaudit_report_dir):
            assert gradaudit_report_dir == report_dir() and session_profile() == "ci"
            write(gradaudit_report_dir, "affine")

        def test_relu(gradaudit_report_dir, gradaudit_profile):
            assert gradaudit_profile == "ci"
            write(gradaudit_report_dir, "relu")
    """)
    r = run(project, "--gradaudit-report", "out", "--gradaudit-profile", "ci")
    assert r.ret == 0, r.stdout.str()
    r.stdout.fnmatch_lines(["*gradaudit: report in *out, profile ci*", "*2 pass, 0 fail*",
                            f"report: {out / 'index.html'}", f"junit: {out / 'junit.xml'}"])
    lines = (out / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["op"] for x in lines) == ["affine", "relu"]
    html = (out / "index.html").read_text()
    assert "affine" in html and "relu" in html and "stale" not in html
    assert _junit_counts(out / "junit.xml") == {"tests": 2, "failures": 0, "errors": 0, "skipped": 0}
    meta = json.loads((out / "run.json").read_text())
    assert meta["profile"] == "ci" and meta["command"][0] == "pytest" and meta["finished"]
    # reporting never pulls in the frameworks, even in a session that renders
    assert (project.path / "modules-at-exit.txt").read_text() == ""


@pytest.mark.parametrize("args, code", [([], 1), (["--gradaudit-fail-on", "fail"], 0),
                                         (["--gradaudit-fail-on", "fail", "--gradaudit-strict"], 1)])
def test_the_severities_that_fail_the_session_are_chosen(project, args, code):
    project.makepyfile(test_cells="""
        from ga_records import write

        def test_cells(gradaudit_report_dir):
            write(gradaudit_report_dir, "softmax", status="fail", severity="unstable")
            write(gradaudit_report_dir, "relu", severity="warning",
                  hazards=[{"kind": "mutation", "message": "relu_backward writes into dout"}])
    """)
    r = run(project, "--gradaudit-report", "out", "--gradaudit-profile", "ci", *args)
    assert r.ret == code, r.stdout.str()


def test_no_option_no_report(project):
    project.makepyfile(test_plain="""
        def test_dir(gradaudit_report_dir):
            assert gradaudit_report_dir is None
    """)
    r = run(project)
    assert r.ret == 0, r.stdout.str()
    assert "gradaudit: report" not in r.stdout.str() and "report:" not in r.stdout.str()
    assert not list(project.path.rglob("results.jsonl"))


def test_planted_wrong_derivation_fails_the_session_and_is_in_the_report(project):
    # the real runner on a ReLU backward with its sign flipped; the test itself asserts nothing:
    # the failing record alone must turn the session red
    project.makeconftest("""
        import sys

        # finite differences alone judge: hiding torch and jax (their oracles then skip) saves their
        # import and the triangulation against them, ~6 s here
        sys.modules["torch"] = sys.modules["jax"] = None
    """)
    project.makepyfile(test_planted="""
        import reference_impl as ref
        from properties import catalogue
        from properties.config import RunConfig
        from properties.runner import run_target_cells
        from properties.target import Target
        from reports.records import RecordSink

        def relu_backward_sign(dout, cache):
            return -ref.relu_backward(dout, cache)

        def test_relu_audit(gradaudit_report_dir):
            spec = catalogue.load()["relu"]
            cfg = RunConfig(oracles=("numeric",), dtypes=("float64",), profile="ci",
                            report_dir=gradaudit_report_dir)
            sink = RecordSink(gradaudit_report_dir / "results.jsonl")
            try:
                run_target_cells(spec, Target("relu_backward_sign", "relu", spec.forward, relu_backward_sign),
                                 spec.inputs, ("typical",), cfg, sink)
            finally:
                sink.close()
    """)
    r = run(project, "--gradaudit-report", "rep")
    assert r.ret == pytest.ExitCode.TESTS_FAILED, r.stdout.str()
    r.stdout.fnmatch_lines(["*FAIL relu*sign_flip*", "*1 failing cell(s) in the report although every test passed*",
                            "*1 passed*"])
    rep = project.path / "rep"
    (rec,) = [json.loads(x) for x in (rep / "results.jsonl").read_text().splitlines()]
    assert (rec["status"], rec["kind"], rec["pattern"]) == ("fail", "gradient", "sign_flip")
    assert (rep / rec["counterexample"]).is_file()
    html = (rep / "index.html").read_text()
    assert "relu_backward_sign" in html and rec["replay"] in html
    assert _junit_counts(rep / "junit.xml")["failures"] == 1


def test_xdist_workers_append_to_one_report_rendered_once(project, monkeypatch):
    pytest.importorskip("xdist")
    # every process that renders says so: only the controller may
    project.makeconftest("""
        import os
        import reports

        role = "?"
        _render = reports.render_html

        def pytest_configure(config):
            global role
            role = "worker" if hasattr(config, "workerinput") else "controller"

        def logged_render(*args, **kwargs):
            with open(os.path.join(os.environ["RENDER_LOG_DIR"], "renders.log"), "a") as f:
                f.write(f"{os.getpid()} {role}\\n")
            return _render(*args, **kwargs)

        reports.render_html = logged_render
    """)
    project.makepyfile(test_many="""
        import os
        import time

        import pytest
        from ga_records import write

        @pytest.mark.parametrize("i", range(6))
        def test_cell(i, gradaudit_report_dir):
            time.sleep(0.2)  # long enough that both workers get tests
            write(gradaudit_report_dir, f"op{i}", message=os.environ["PYTEST_XDIST_WORKER"])
    """)
    monkeypatch.setenv("RENDER_LOG_DIR", str(project.path))
    r = run(project, "-n", "2", "--dist", "load", "--gradaudit-report", "rep")
    assert r.ret == 0, r.stdout.str()
    renders = (project.path / "renders.log").read_text().splitlines()
    assert len(renders) == 1 and renders[0].endswith("controller"), renders
    recs = [json.loads(x) for x in (project.path / "rep" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["op"] for r in recs) == [f"op{i}" for i in range(6)]
    assert {r["message"] for r in recs} == {"gw0", "gw1"}
    html = (project.path / "rep" / "index.html").read_text()
    assert all(f"op{i}" in html for i in range(6))
    assert _junit_counts(project.path / "rep" / "junit.xml")["tests"] == 6


@pytest.mark.parametrize("registered_by", ["entry point", "tests/conftest.py"])
def test_registered_once_with_this_repositorys_conftest(project, monkeypatch, registered_by):
    """tests/conftest.py registers the plugin for a bare checkout, and stays out of the way when
    the entry point (declared in pyproject.toml, installed here as a stand-in distribution) did."""
    project.makeconftest((REPO / "tests" / "conftest.py").read_text())
    project.makepyfile(test_fixtures="""
        def test_fixtures(gradaudit_profile, gradaudit_report_dir):
            assert gradaudit_profile == "thorough"
            assert gradaudit_report_dir.name == "rep"
    """)
    if registered_by == "entry point":
        declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
        assert declared == {"gradaudit": "gradaudit.pytest_plugin"}
        dist = project.mkdir("site") / "gradaudit_plugin_probe-0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gradaudit-plugin-probe\nVersion: 0\n")
        (dist / "entry_points.txt").write_text("[pytest11]\ngradaudit = gradaudit.pytest_plugin\n")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(project.path / "site"), os.environ["PYTHONPATH"]]))
    else:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    r = project.runpytest_subprocess("-p", "no:cacheprovider", "--gradaudit-profile", "thorough",
                                     "--gradaudit-report", "rep", timeout=120)
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    assert (project.path / "rep" / "index.html").is_file()


def test_importing_the_plugin_is_light():
    # pytest imports the plugin in every session of every project that installs gradaudit
    code = ("import sys, gradaudit; before = set(sys.modules); import gradaudit.pytest_plugin; "
            "heavy = ('torch', 'jax', 'numpy', 'hypothesis', 'reports', 'properties', 'oracles'); "
            "print(','.join(m for m in ('torch', 'jax') if m in sys.modules)); "
            "print(','.join(m for m in heavy if m in set(sys.modules) - before))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    frameworks, added = (r.stdout.splitlines() + ["", ""])[:2]
    assert frameworks == "", f"importing the plugin imported {frameworks}"
    assert added == "", f"the plugin itself imported {added} (import them in the hooks that need them)"
