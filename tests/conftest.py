"""Shared pytest setup.

`--gradaudit-profile`, `--gradaudit-report` and the `gradaudit_profile` / `gradaudit_report_dir`
fixtures come from gradaudit's pytest plugin (gradaudit/pytest_plugin.py). An installed gradaudit
registers it through its `pytest11` entry point; a bare checkout (or PYTEST_DISABLE_PLUGIN_AUTOLOAD)
does not, so it is registered here then — once: the same plugin twice would add its options twice.
"""
import gradaudit.pytest_plugin


def pytest_addoption(parser, pluginmanager):
    if not pluginmanager.is_registered(gradaudit.pytest_plugin):
        pluginmanager.register(gradaudit.pytest_plugin, "gradaudit")
