from __future__ import annotations

import os
from functools import cache

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@cache
def chromium_problem() -> str | None:
    """Why Debian's Chromium is not there, or None (tests install nothing: `make browser` does)."""
    if os.path.exists(CHROMIUM):
        return None
    return f"{CHROMIUM} is missing: run `make browser` (as root) to install it"


@pytest.fixture(scope="session")
def chromium() -> str:
    problem = chromium_problem()
    if problem is not None:
        pytest.skip(f"!!! BROWSER TESTS SKIPPED: {problem}")
    return CHROMIUM


def pytest_report_header() -> list[str]:
    if os.path.exists(CHROMIUM):
        return [f"browser tests: {CHROMIUM}"]
    return [f"!!! browser tests: {CHROMIUM} missing, they will be SKIPPED (run `make browser`)"]
