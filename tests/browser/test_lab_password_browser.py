"""Issue 30, the optional lab password, on a real server: with STEERBOARD_LAB_PASSWORD set the
health endpoint stays open (a load balancer or the study's launcher checks it), the app shows
only the password prompt, a wrong password is refused, and the right one opens the app."""
from __future__ import annotations

import urllib.request

from browser_helpers import Page, expect, wait_idle

LONG = 180_000


def test_lab_password_guards_the_app_and_leaves_health_open(page: Page, start_server):
    server = start_server(extra_env={"STEERBOARD_LAB_PASSWORD": "lab-pw-7", "STEERBOARD_ADMIN_PASSWORD": "admin"})
    with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=10) as r:
        assert r.status == 200 and r.read().decode().strip() == "ok"
    page.goto(server.url, timeout=LONG)
    expect(page.get_by_text("This server is password-protected")).to_be_visible(timeout=LONG)
    expect(page.get_by_role("heading", name="Home")).to_have_count(0)
    expect(page.locator('[data-testid="stSidebarNav"]')).to_have_count(0)  # no way into the other pages
    box = page.get_by_label("Password", exact=True)
    box.fill("not-it")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Wrong password.")).to_be_visible(timeout=LONG)
    expect(page.get_by_role("heading", name="Home")).to_have_count(0)
    wait_idle(page, LONG)
    page.get_by_label("Password", exact=True).fill("lab-pw-7")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Home")).to_be_visible(timeout=LONG)
    expect(page.get_by_text("This server is password-protected")).to_have_count(0)
