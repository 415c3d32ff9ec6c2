"""pytest plugin (entry point ``pytest11``): gradaudit's report from a pytest session.

``pytest --gradaudit-report DIR`` sends the records of every check that runs in the session — the
differential suite, and any test that writes through ``reports.records.RecordSink`` into
``gradaudit_report_dir`` (or :func:`report_dir`) — to ``DIR/results.jsonl``, and at the end renders
``DIR/index.html`` and ``DIR/junit.xml`` with the ``reports`` package, as ``gradaudit run`` does.
A record whose severity ``--gradaudit-fail-on`` names (default ``fail,unstable``; ``--gradaudit-strict``
adds ``warning``) fails the session even if the test that wrote it passed: a red report never comes
with a green job.

Under xdist (``-n auto``) every worker appends to the same ``results.jsonl`` (one ``write()`` per
record on an O_APPEND descriptor); only the controller clears it at the start and renders at the
end.

pytest loads this module in every session of every project that installs gradaudit, so importing
it imports nothing heavy: no torch, no jax, not even NumPy; ``reports`` is imported only by a
session that asked for a report.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path

import pytest

__all__ = ["SEVERITIES", "fail_on", "gradaudit_profile", "gradaudit_report_dir", "profile", "report_dir",
           "session_profile"]

PROFILES = ("ci", "dev", "thorough")
_REPORT_DIR = pytest.StashKey["Path | None"]()
_STARTED = pytest.StashKey[tuple]()  # (iso timestamp, perf_counter) of the controller's session start
_OUTCOME = pytest.StashKey[dict]()  # what the controller rendered, for the terminal summary
_sessions: list = []  # configs of the pytest sessions running in this process (pytester nests them)


def pytest_addoption(parser):
    group = parser.getgroup("gradaudit", "gradaudit: differential checks of hand-derived gradients")
    group.addoption("--gradaudit-report", metavar="DIR", default=None,
                    help="write the records of gradaudit's checks to DIR/results.jsonl and render "
                         "DIR/index.html and DIR/junit.xml at the end of the session")
    group.addoption("--gradaudit-profile", default=None, choices=PROFILES,
                    help="Hypothesis profile of gradaudit's checks (default: $GRADAUDIT_PROFILE, "
                         "ci under CI, else dev)")
    group.addoption("--gradaudit-fail-on", default=None, metavar="SEVERITIES",
                    help="comma-separated severities in the report that fail the session: fail, unstable, "
                         "warning (default fail,unstable)")
    group.addoption("--gradaudit-strict", action="store_true", default=False,
                    help="warnings in the report fail the session too (adds warning to --gradaudit-fail-on)")


SEVERITIES = ("fail", "unstable", "warning")  # reports.records.SEVERITIES (not imported here: see above)


def fail_on(config) -> tuple[str, ...]:
    """The severities that fail the session: --gradaudit-fail-on, plus warning with --gradaudit-strict."""
    raw = config.getoption("gradaudit_fail_on", None)
    chosen = ("fail", "unstable") if raw is None else tuple(v.strip() for v in raw.split(",") if v.strip())
    bad = [c for c in chosen if c not in SEVERITIES]
    if bad or not chosen:
        raise pytest.UsageError(f"--gradaudit-fail-on: unknown severity {', '.join(map(repr, bad)) or '(none)'}; "
                                f"accepted: {', '.join(SEVERITIES)}")
    if config.getoption("gradaudit_strict", False) and "warning" not in chosen:
        chosen = (*chosen, "warning")
    return chosen


def profile(config) -> str:
    """The Hypothesis profile: --gradaudit-profile, else $GRADAUDIT_PROFILE, else the default (ci under
    CI, else dev: properties.config.default_profile)."""
    chosen = config.getoption("gradaudit_profile") or os.environ.get("GRADAUDIT_PROFILE")
    if chosen:
        return chosen
    from properties.config import default_profile

    return default_profile()


def report_dir() -> Path | None:
    """The report directory of the pytest session running in this process (``--gradaudit-report``,
    absolute), or None when the session asked for no report or no session is running."""
    return _sessions[-1].stash.get(_REPORT_DIR, None) if _sessions else None


def session_profile() -> str | None:
    """The Hypothesis profile of the pytest session running in this process, or None outside pytest."""
    return profile(_sessions[-1]) if _sessions else None


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")  # xdist gives its workers `workerinput`


def pytest_configure(config):
    _sessions.append(config)
    fail_on(config)  # a bad --gradaudit-fail-on stops the session before it runs
    raw = config.getoption("gradaudit_report")
    if not raw:
        config.stash[_REPORT_DIR] = None
        return
    path = Path(config.invocation_params.dir, raw).resolve()
    # xdist hands config.option to its workers when it starts them (after configure): they get
    # the absolute path, whatever their working directory
    config.option.gradaudit_report = str(path)
    config.stash[_REPORT_DIR] = path


def pytest_unconfigure(config):
    if config in _sessions:
        _sessions.remove(config)


def pytest_report_header(config):
    path = config.stash.get(_REPORT_DIR, None)
    if path is not None:
        return f"gradaudit: report in {path}, profile {profile(config)}"


@pytest.hookimpl(tryfirst=True)  # before xdist starts its workers (its sessionstart is trylast)
def pytest_sessionstart(session):
    config = session.config
    path = config.stash.get(_REPORT_DIR, None)
    if path is None or not _is_controller(config):
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "results.jsonl").unlink(missing_ok=True)  # once per session, by the controller only
    except OSError as e:
        raise pytest.UsageError(f"--gradaudit-report {path}: not writable ({e.strerror or e})") from None
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    config.stash[_STARTED] = (started, time.perf_counter())
    _write_meta(path, _meta(config, started, None, None, []))


def _meta(config, started, finished, duration, records) -> dict:
    from properties.session import run_meta

    return run_meta(["pytest", *config.invocation_params.args], profile=profile(config),
                    seed=config.getoption("hypothesis_seed", None), records=records, started=started,
                    finished=finished, duration_s=duration, versions_of=("pytest",),
                    workers=getattr(config.option, "numprocesses", None) or 1)


def _write_meta(path: Path, meta: dict) -> None:
    from reports.records import write_run_meta

    write_run_meta(path, meta)


def pytest_sessionfinish(session):
    config = session.config
    path = config.stash.get(_REPORT_DIR, None)
    if path is None or not _is_controller(config) or _STARTED not in config.stash:
        return
    import reports

    started, t0 = config.stash[_STARTED]
    results = path / "results.jsonl"
    outcome = config.stash[_OUTCOME] = {}
    try:
        records = reports.load_records([results]) if results.exists() else []
    except reports.RecordError as e:
        outcome["error"] = f"cannot read {results}: {e}"
        records = []
    finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = _meta(config, started, finished, round(time.perf_counter() - t0, 2), records)
    _write_meta(path, meta)
    outcome["html"] = reports.render_html(records, meta, path)
    outcome["junit"] = reports.write_junit(records, path / "junit.xml")
    outcome["summary"] = reports.terminal_summary(records)
    from reports.records import failing

    outcome["bad"] = len(failing(records, fail_on(config)))
    if (outcome["bad"] or "error" in outcome) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        outcome["overruled"] = True


def pytest_terminal_summary(terminalreporter, config):
    outcome = config.stash.get(_OUTCOME, None)
    if outcome is None:
        return
    tr = terminalreporter
    tr.section("gradaudit")
    if "error" in outcome:
        tr.write_line(f"gradaudit: {outcome['error']}", red=True)
    for line in outcome["summary"].splitlines():
        tr.write_line(line)
    tr.write_line(f"report: {outcome['html']}")
    tr.write_line(f"junit: {outcome['junit']}")
    if outcome.get("overruled") and outcome["bad"]:
        tr.write_line(f"gradaudit: {outcome['bad']} failing cell(s) in the report although every test passed "
                      f"(failing: {', '.join(fail_on(config))}): the session fails", red=True)


@pytest.fixture(scope="session")
def gradaudit_profile(request) -> str:
    """The Hypothesis profile name for gradaudit's checks (``ci``, ``dev`` or ``thorough``)."""
    return profile(request.config)


@pytest.fixture(scope="session")
def gradaudit_report_dir(request) -> Path | None:
    """The absolute ``--gradaudit-report`` directory, or None when the session asked for no report.
    Records written to ``<dir>/results.jsonl`` (``reports.records.RecordSink``) are in the report."""
    return request.config.stash.get(_REPORT_DIR, None)
