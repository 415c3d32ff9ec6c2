"""Shared pytest setup.

`--gradaudit-profile`, `--gradaudit-report` and the `gradaudit_profile` / `gradaudit_report_dir`
fixtures come from gradaudit's pytest plugin (gradaudit/pytest_plugin.py). An installed gradaudit
registers it through its `pytest11` entry point; a bare checkout (or PYTEST_DISABLE_PLUGIN_AUTOLOAD)
does not, so it is registered here then — once: the same plugin twice would add its options twice.

`planted_report`: a real run with planted bugs (tests/planted_run.py), for the report's tests.
"""
import pytest
from hypothesis import HealthCheck, settings

import gradaudit.pytest_plugin

# The suite's own @given tests check properties, not speed (speed is measured by benchmarks/): on a
# loaded 2-core machine one draw can stall past the second that Hypothesis's too_slow health check
# allows (tests/test_audit.py's derivation-shape test: 0.2 s alone, one 1.5 s draw in a full -n 2 run
# at load 4). gradaudit's own searches suppress it already (properties/config.py).
settings.register_profile("gradaudit-tests", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gradaudit-tests")


def pytest_addoption(parser, pluginmanager):
    if not pluginmanager.is_registered(gradaudit.pytest_plugin):
        pluginmanager.register(gradaudit.pytest_plugin, "gradaudit")


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown to a run without xdist
def pytest_xdist_node_collection_finished(node, ids):
    """With --dist loadgroup (pyproject's addopts) xdist suffixes the id of every test marked
    xdist_group with "@group"; that suffix keeps a group, and its module-scoped audit fixture, on one
    worker. pytest 9.2's structured node ids silently drop it (pytest-xdist#1386, hence pytest<9.2 in
    the dev extra): each expensive fixture then ran once per worker, minutes of a 2-core run. Every
    test of tests/test_notes.py is in a group: say so instead of running slowly."""
    if node.config.getoption("dist", None) != "loadgroup":
        return
    lost = [i for i in ids if i.startswith("tests/test_notes.py::test_verdict") and "@" not in i]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup is not grouping ({lost[0]} has no @group suffix): this "
                                f"pytest-xdist does not work with this pytest (pytest-xdist#1386)")


@pytest.fixture(scope="session")
def planted_report(tmp_path_factory):
    """A real run of the catalogue with planted bugs (tests/planted_run.py): (report dir, records).
    Shared by the report's tests (they keep to one xdist group, so one worker runs it once)."""
    from planted_run import planted_run

    d = tmp_path_factory.mktemp("planted-run")
    return d, planted_run(d)
