"""The example app's pages in a real headless browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory) -> Iterator[str]:
    """The example app after `make demo`, served on a free port."""
    instance = tmp_path_factory.mktemp("instance")
    env = {**os.environ, "EXAMPLE_APP_INSTANCE": str(instance)}
    subprocess.run([sys.executable, "-m", "example_app.demo"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", "run", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def page(chromium, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_partner_page_shows_the_demo_partners_totals_and_chart(demo_site, page, tmp_path):
    page.goto(demo_site + "/partners")
    rows = page.locator("#partners tbody tr")
    assert rows.count() == 4  # alice, bob, carol, and the seed scenario's partner
    alice = page.locator('tr[data-partner="partner-alice"]')
    assert alice.locator("td.revenue").inner_text() == "148.00 USD"
    assert alice.locator("td.commission").inner_text() == "41.95 USD"
    bob = page.locator('tr[data-partner="partner-bob"]')
    assert bob.locator("td.revenue").inner_text() == "0.00"  # erin's charge: dispute lost

    bars = page.locator("#revenue-chart rect.bar")
    assert bars.count() == 4
    widths = [bars.nth(i).bounding_box()["width"] for i in range(4)]
    # By partner key: alice 148.00, bob 0 (his only payment was lost to a dispute),
    # carol 25.00, and the seed scenario's partner 49.00 (its retried renewal).
    assert widths[0] > widths[3] > widths[2] > 0
    assert widths[1] == 0
    shot = tmp_path / "partners.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000


def test_partner_link_then_signup_in_the_browser(demo_site, page):
    link = base64.urlsafe_b64encode(b"partner-bob").decode().rstrip("=")
    page.goto(f"{demo_site}/?ps_partner_key={link}")
    assert page.locator("#partner").inner_text() == "partner-bob"
    cookie = next(c for c in page.context.cookies() if c["name"] == "ps_partner_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.fill("input[name=email]", "hana@example.com")
    page.click("button[type=submit]")
    assert "Partner: partner-bob" in page.locator(".flash").inner_text()
    assert page.locator('tr[data-partner="partner-bob"] td').nth(1).inner_text() == "2"
