from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@cache
def chromium_problem() -> str | None:
    """Why Debian's Chromium cannot be had, or None once it is installed.

    It is installed here when missing (the browser tests need it, and Playwright's own
    browser download is not available), provided apt-get can be run.
    """
    if os.path.exists(CHROMIUM):
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"{CHROMIUM} is missing and apt-get cannot be run here to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=600, env=env)
        except (subprocess.SubprocessError, OSError) as error:
            return f"installing Debian's chromium failed ({type(error).__name__})"
    return None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is still missing after apt-get"


@pytest.fixture(scope="session")
def chromium() -> str:
    problem = chromium_problem()
    if problem is not None:
        pytest.skip(f"!!! BROWSER TESTS SKIPPED: {problem}")
    return CHROMIUM


def pytest_report_header() -> list[str]:
    if os.path.exists(CHROMIUM):
        return [f"browser tests: {CHROMIUM}"]
    return [f"browser tests: {CHROMIUM} missing; the first browser test will try apt-get"]
