"""Shared pytest setup: the Hypothesis profile for the differential suite.

`--gradaudit-profile ci|dev|thorough` or $GRADAUDIT_PROFILE picks it; under CI ($CI set) the
default is `ci` (derandomized, so a CI run is reproducible), elsewhere `dev`.
"""
import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--gradaudit-profile", default=None, choices=("ci", "dev", "thorough"),
                     help="Hypothesis profile of the differential suite (default: $GRADAUDIT_PROFILE, ci under CI, else dev)")


@pytest.fixture(scope="session")
def gradaudit_profile(request):
    return (request.config.getoption("--gradaudit-profile") or os.environ.get("GRADAUDIT_PROFILE")
            or ("ci" if os.environ.get("CI") else "dev"))
