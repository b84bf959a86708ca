"""The Grid feedback page in a real browser: a run pauses at the first epoch end, a click on
the review image marks a grid square (hatched red in the rendered pixels), the marks survive a
refresh while the job waits, and Continue trains on to a new version."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from browser_helpers import ROOT, Page, expect, expect_text, live, thread_env, wait_idle

from PIL import Image

LONG = 90_000
HATCH = np.array([0.6 * 220 + 0.4 * 255, 0.6 * 38 + 0.4 * 255, 0.6 * 38 + 0.4 * 255])
IMG = ".st-key-grid-review .sb-click-wrap img"


@pytest.fixture(scope="module")
def grid_workspace(make_workspace, tmp_path_factory):
    """A workspace with the digits base model and a biased-digits one (3 epochs, via the CLI)."""
    out = tmp_path_factory.mktemp("biased-base-grid")
    cmd = [sys.executable, "-m", "core.train", "--data", "biased-digits", "--model", "seed-cnn", "--epochs", "3",
           "--lr", "0.01", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **thread_env()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ws = make_workspace("ws-grid")
    for f in out.glob("*.pt"):
        shutil.copy2(f, ws / "base" / f.name)
    return ws


def hatched(page: Page) -> int:
    shot = page.locator(IMG).screenshot()
    img = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.float64)
    return int((np.abs(img - HATCH).max(axis=2) < 25).sum())


def set_number(page: Page, label: str, value: float, shown: str | None = None) -> None:
    wait_idle(page)  # a value typed while the previous change's rerun redraws the box can be lost (seen in CI)
    # under load, the panel of the run before "Open biased digits" can linger beside the new one
    expect(page.locator(live(".st-key-grid-params"))).to_have_count(1, timeout=LONG)
    wait_idle(page)
    box = page.locator(live(".st-key-grid-params")).get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")
    wait_idle(page)
    # under load the rerun after Tab can draw the box anew while the old copy is still in the page (seen once
    # under the full suite: two "Epochs" boxes, both 2): wait for one box, then check its value
    boxes = page.locator(live(".st-key-grid-params")).get_by_label(label, exact=True)
    expect(boxes).to_have_count(1, timeout=LONG)
    expect(boxes).to_have_value(shown or str(value))


def test_click_marks_a_square_refresh_keeps_it_continue_trains_on(start_server, grid_workspace, page: Page):
    server = start_server(grid_workspace)
    page.goto(f"{server.url}/grid")
    page.get_by_role("button", name="Open biased digits").click(timeout=LONG)
    expect(page.get_by_text(re.compile(r"Started workbench \w+ on biased-digits"))).to_be_visible(timeout=LONG)
    set_number(page, "Epochs", 2)
    set_number(page, "Mistakes per review", 3)
    # the page seeds each run from the clock; at the default lr (0.005) an occasional seed made this
    # base model's run diverge in its second epoch (seen once in a full suite), which is not what
    # this test is about: a gentler lr keeps "Continue trains on to a new version" testable
    set_number(page, "Learning rate", 0.001, shown="0.0010")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Start training with reviews").click()
    expect_text(page, ".st-key-grid-review", "Epoch 1 ended", LONG)
    img = page.locator(IMG)
    expect(img).to_be_visible(timeout=LONG)
    # before any mark: the saliency overlay itself may hold a few pixels of the hatch's colour
    # (91 seen with a deep red map), so the marks are measured against this count
    base = hatched(page)
    assert base < 300, f"{base} hatch-coloured pixels before any mark"
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.05, "y": box["height"] * 0.05})  # the top-left square
    expect_text(page, ".st-key-grid-review", "1 of 49 squares marked", LONG)
    img.click(position={"x": box["width"] * 0.95, "y": box["height"] * 0.95})  # the bottom-right square
    expect_text(page, ".st-key-grid-review", "2 of 49 squares marked", LONG)
    deadline = 40
    while deadline and hatched(page) < base + 100:
        page.wait_for_timeout(300)
        deadline -= 1
    assert hatched(page) >= base + 100, "no hatched square after the clicks"
    page.reload()  # the job still waits; the marks were saved with each click
    expect_text(page, ".st-key-grid-review", "2 of 49 squares marked", LONG)
    expect(page.locator(IMG)).to_be_visible(timeout=LONG)
    assert hatched(page) >= base + 100
    wait_idle(page)
    page.locator(live(".st-key-grid-continue") + " button").click()
    expect_text(page, ".st-key-grid-status", re.compile(r"Training|Finished"), LONG)  # the review was left
    expect_text(page, ".st-key-grid-status", re.compile(r"Finished: version v1\b"), LONG)
    expect_text(page, ".st-key-sb-version", re.compile(r"Model version:\s*v1\b"), LONG)
    expect_text(page, ".st-key-grid-results", "1 in its penalty set", LONG)
    assert page.locator('[data-testid="stException"]').count() == 0


def test_counterexamples_turned_on_in_the_panel_reach_the_version(start_server, grid_workspace, page: Page):
    """The counterexample toggle starts off (the k box greyed out, the start caption says the
    penalty alone); turned on in the browser it enables the box, off greys it out again, and on
    once more with k = 3 the run's version records counterexamples, 3 per marked image, made > 0."""
    from urllib.parse import parse_qs, urlparse

    server = start_server(grid_workspace)
    page.goto(f"{server.url}/grid")
    page.get_by_role("button", name="Open biased digits").click(timeout=LONG)
    expect(page.get_by_text(re.compile(r"Started workbench \w+ on biased-digits"))).to_be_visible(timeout=LONG)
    page.wait_for_url(re.compile(r"[?&]wb=[0-9a-f]{12}"), timeout=LONG)
    wb_id = parse_qs(urlparse(page.url).query)["wb"][0]
    set_number(page, "Epochs", 2)
    set_number(page, "Mistakes per review", 2)
    set_number(page, "Learning rate", 0.001, shown="0.0010")  # see the test above
    key = ".st-key-grid-p-counterexamples"
    k_box = page.locator(live(".st-key-grid-params")).get_by_label("Counterexamples per image", exact=True)
    expect(page.locator(live(key)).get_by_role("switch")).to_be_attached(timeout=LONG)
    expect(page.locator(live(key)).get_by_role("switch")).not_to_be_checked(timeout=LONG)  # off by default
    expect(k_box).to_be_disabled(timeout=LONG)
    expect_text(page, ".st-key-grid-start", "Marked images go to the penalty;", LONG)
    for checked in (True, False, True):  # on, off again, and on for the run
        wait_idle(page)
        page.locator(live(key)).locator("label").first.click()
        wait_idle(page)
        switch = page.locator(live(key)).get_by_role("switch")
        if checked:
            expect(switch).to_be_checked(timeout=LONG)
            expect(k_box).to_be_enabled(timeout=LONG)
            expect_text(page, ".st-key-grid-start", "Marked images go to the penalty and 4 counterexamples per image",
                        LONG)
        else:
            expect(switch).not_to_be_checked(timeout=LONG)
            expect(k_box).to_be_disabled(timeout=LONG)
            expect_text(page, ".st-key-grid-start", "Marked images go to the penalty;", LONG)
    set_number(page, "Counterexamples per image", 3)
    expect_text(page, ".st-key-grid-start", "Marked images go to the penalty and 3 counterexamples per image", LONG)
    page.get_by_role("button", name="Start training with reviews").click()
    expect_text(page, ".st-key-grid-review", "Epoch 1 ended", LONG)
    img = page.locator(IMG)
    expect(img).to_be_visible(timeout=LONG)
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.05, "y": box["height"] * 0.05})
    expect_text(page, ".st-key-grid-review", "1 of 49 squares marked", LONG)
    wait_idle(page)
    page.locator(live(".st-key-grid-continue") + " button").click()
    expect_text(page, ".st-key-grid-status", re.compile(r"Finished: version v1\b"), LONG)
    expect_text(page, ".st-key-grid-results", "Counterexamples: 3 per marked image", LONG)
    expect_text(page, ".st-key-sb-version", "+ counterexamples (3 per marked image)", LONG)
    sys.path.insert(0, str(ROOT))
    from core.session.store import Store

    version = Store(server.workspace).versions(wb_id)[-1]
    cex = version.feedback["counterexamples"]
    assert version.number == 1 and cex is not None and cex["enabled"] and cex["k"] == 3
    assert cex["made"] > 0 and cex["made"] % 3 == 0  # 3 copies of every reviewed image
    assert version.description.endswith("+ counterexamples (3 per marked image)")
    assert page.locator('[data-testid="stException"]').count() == 0
