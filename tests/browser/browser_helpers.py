"""Locator helpers shared by the browser tests.

While Streamlit reruns, it can keep two copies of a keyed container in the DOM for a moment:
the previous one marked ``data-stale="true"``, or (seen in CI) two live-looking copies while
an element moves in the tree. A plain ``expect(page.locator(sel)).to_contain_text(...)`` then
fails in strict mode. These helpers wait until *some* copy shows the text instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

try:  # the test modules import Page and expect from here, so they load without playwright
    from playwright.sync_api import Locator, Page, expect
except ImportError:  # the conftest fixtures skip the tests (and fail on CI)
    Locator = Page = object
    expect = None


ROOT = Path(__file__).resolve().parents[2]
# One torch/OpenMP thread in the processes the tests start. On a 2-core machine shared with
# Chromium, torch's default of 2 OpenMP threads thrashes whenever another process runs:
# measured here, the CLI pre-training took 27 s instead of 12 s, and a 2-epoch run in the app
# with the page watching took 14-20 s instead of 9-11 s. Override with STEERBOARD_TEST_THREADS
# (empty: leave torch's default).
TEST_THREADS = os.environ.get("STEERBOARD_TEST_THREADS", "1")


def thread_env() -> dict:
    return {"OMP_NUM_THREADS": TEST_THREADS, "MKL_NUM_THREADS": TEST_THREADS} if TEST_THREADS else {}


def live(selector: str) -> str:
    """``selector`` restricted to copies that Streamlit has not marked stale."""
    return f'{selector}:not([data-stale="true"])'


def with_text(page: Page, selector: str, text: str | re.Pattern) -> Locator:
    """The first live element matching ``selector`` whose text contains ``text``."""
    return page.locator(live(selector)).filter(has_text=text).first


def expect_text(page: Page, selector: str, text: str | re.Pattern, timeout: int) -> None:
    """Wait until a live element matching ``selector`` contains ``text``. On a timeout the
    failure says what the live copies of ``selector`` showed instead (the aria snapshot
    playwright prints is cut off in CI logs before it reaches the element)."""
    try:
        expect(with_text(page, selector, text)).to_be_visible(timeout=timeout)
    except AssertionError as exc:
        shown = [t.strip()[:400] for t in page.locator(live(selector)).all_inner_texts()]
        raise AssertionError(f"{selector} never showed {text!r}; it shows {shown or 'nothing (not on the page)'}"
                             ) from exc


def wait_idle(page: Page, timeout: int = 30_000) -> None:
    """Wait until no script run of the page is in progress (Streamlit marks the app root),
    so that a click is not sent while a polling fragment or a rerun replaces the element."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
