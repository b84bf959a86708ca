"""The Attention page in a real browser: a left click on the workspace image draws a positive
dot and a right click a hatched negative superpixel (the custom component delivers both
buttons); CONFIRM marks the thumbnail; a refresh keeps confirmed annotations; FINE-TUNE makes
a version."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from browser_helpers import ROOT, Page, expect, expect_text, live, thread_env, wait_idle

from PIL import Image

LONG = 90_000
POSITIVE = np.array([22, 163, 74])
HATCH = np.array([0.6 * 220 + 0.4 * 255, 0.6 * 38 + 0.4 * 255, 0.6 * 38 + 0.4 * 255])


@pytest.fixture(scope="module")
def attention_workspace(make_workspace, tmp_path_factory):
    """A workspace with the digits base model and a biased-digits one (3 epochs, via the CLI)."""
    out = tmp_path_factory.mktemp("biased-base")
    cmd = [sys.executable, "-m", "core.train", "--data", "biased-digits", "--model", "seed-cnn", "--epochs", "3",
           "--lr", "0.01", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                                           **thread_env()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ws = make_workspace("ws-attention")
    for f in out.glob("*.pt"):
        shutil.copy2(f, ws / "base" / f.name)
    return ws


def pixels(page: Page, selector: str) -> np.ndarray:
    shot = page.locator(selector).screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.float64)


def count_near(img: np.ndarray, colour: np.ndarray, tol: float = 30) -> int:
    return int((np.abs(img - colour).max(axis=2) < tol).sum())


def open_biased(page: Page, url: str) -> None:
    page.goto(f"{url}/attention")
    page.get_by_role("button", name="Open biased digits").click(timeout=LONG)
    expect_text(page, ".st-key-sb-version", "Model version", LONG)
    expect(page.get_by_text(re.compile(r"Started workbench \w+ on biased-digits"))).to_be_visible(timeout=LONG)


def set_number(page: Page, label: str, value: int) -> None:
    # as on the Grid page: a value typed while the previous change's rerun redraws the panel can
    # be lost, and for a moment two live copies of the panel can be in the DOM (seen under load)
    wait_idle(page)
    expect(page.locator(live(".st-key-att-params"))).to_have_count(1, timeout=LONG)
    box = page.locator(live(".st-key-att-params")).get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")
    wait_idle(page)
    expect(page.locator(live(".st-key-att-params")).get_by_label(label, exact=True)).to_have_value(str(value),
                                                                                                  timeout=LONG)


IMG = ".st-key-att-workspace .sb-click-wrap img"


def test_clicks_confirm_refresh_and_fine_tune(start_server, attention_workspace, page: Page):
    server = start_server(attention_workspace)
    open_biased(page, server.url)
    set_number(page, "Candidates per round", 2)
    set_number(page, "Epochs", 2)
    page.get_by_role("button", name="START", exact=True).click()
    expect_text(page, ".st-key-att-grid", "0 of 2 confirmed", LONG)
    img = page.locator(IMG)
    expect(img).to_be_visible(timeout=LONG)
    before = pixels(page, IMG)
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})  # left: look here
    expect(page.locator(".st-key-att-undo button")).to_be_enabled(timeout=LONG)
    after_left = pixels(page, IMG)
    assert count_near(after_left, POSITIVE) > count_near(before, POSITIVE) + 20, "no green dot after a left click"
    page.locator(IMG).click(position={"x": box["width"] * 0.04, "y": box["height"] * 0.04}, button="right")
    page.wait_for_timeout(500)
    deadline = 40
    while deadline and count_near(pixels(page, IMG), HATCH, 25) < 50:  # the hatched region appears on the next draw
        page.wait_for_timeout(500)
        deadline -= 1
    assert count_near(pixels(page, IMG), HATCH, 25) >= 50, "no hatched negative region after a right click"
    page.locator(".st-key-att-confirm button").click()
    expect_text(page, ".st-key-att-grid", "1 of 2 confirmed", LONG)
    expect(page.locator(live(".st-key-att-grid")).get_by_role("button", name="✓ open")).to_have_count(1, timeout=LONG)
    page.reload()  # in the middle of annotating: the round and the confirmed image are still there
    expect_text(page, ".st-key-att-grid", "1 of 2 confirmed", LONG)
    img = page.locator(IMG)
    expect(img).to_be_visible(timeout=LONG)
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.45})
    expect(page.locator(".st-key-att-undo button")).to_be_enabled(timeout=LONG)
    page.locator(".st-key-att-confirm button").click()
    expect_text(page, ".st-key-att-grid", "2 of 2 confirmed", LONG)
    page.locator(".st-key-att-finetune button").click()
    expect_text(page, ".st-key-att-status", re.compile(r"Finished: version v1\b"), LONG)
    expect_text(page, ".st-key-sb-version", re.compile(r"Model version:\s*v1\b"), LONG)
    assert page.locator('[data-testid="stException"]').count() == 0


def workbench_id(page: Page) -> str:
    from urllib.parse import parse_qs, urlparse

    page.wait_for_url(re.compile(r"[?&]wb=[0-9a-f]{12}"), timeout=LONG)
    return parse_qs(urlparse(page.url).query)["wb"][0]


def flip(page: Page, key: str) -> None:
    """Click a toggle's label, as a person does (its input is visually hidden)."""
    expect(page.locator(live(f".st-key-{key}"))).to_have_count(1, timeout=LONG)
    page.locator(live(f".st-key-{key}")).locator("label").first.click()
    wait_idle(page, LONG)


def test_counterexamples_set_in_the_panel_reach_the_version(start_server, attention_workspace, page: Page):
    """The panel's counterexample toggle starts off with the k box greyed out; turned on it
    enables the box, off greys it out again, on once more; k typed in the box is what the
    fine-tune uses: the version's feedback and description say 3 per image, 3 made."""
    import sys as _sys

    server = start_server(attention_workspace)
    open_biased(page, server.url)
    wb_id = workbench_id(page)
    switch = page.locator(live(".st-key-att-p-counterexamples")).get_by_role("switch")
    expect(switch).to_be_attached(timeout=LONG)
    expect(switch).not_to_be_checked(timeout=LONG)  # off by default
    k_box = page.locator(live(".st-key-att-params")).get_by_label("Counterexamples per image", exact=True)
    expect(k_box).to_be_disabled(timeout=LONG)
    flip(page, "att-p-counterexamples")  # on
    expect(page.locator(live(".st-key-att-p-counterexamples")).get_by_role("switch")).to_be_checked(timeout=LONG)
    expect(k_box).to_be_enabled(timeout=LONG)
    flip(page, "att-p-counterexamples")  # off again
    expect(page.locator(live(".st-key-att-p-counterexamples")).get_by_role("switch")).not_to_be_checked(timeout=LONG)
    expect(k_box).to_be_disabled(timeout=LONG)
    flip(page, "att-p-counterexamples")  # and on for the fine-tune
    expect(page.locator(live(".st-key-att-p-counterexamples")).get_by_role("switch")).to_be_checked(timeout=LONG)
    expect(k_box).to_be_enabled(timeout=LONG)
    set_number(page, "Counterexamples per image", 3)
    set_number(page, "Candidates per round", 1)
    set_number(page, "Epochs", 1)
    page.get_by_role("button", name="START", exact=True).click()
    expect_text(page, ".st-key-att-grid", "0 of 1 confirmed", LONG)
    img = page.locator(IMG)
    expect(img).to_be_visible(timeout=LONG)
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})  # left: look here
    expect(page.locator(".st-key-att-undo button")).to_be_enabled(timeout=LONG)
    page.locator(IMG).click(position={"x": box["width"] * 0.04, "y": box["height"] * 0.04}, button="right")
    deadline = 40
    while deadline and count_near(pixels(page, IMG), HATCH, 25) < 50:  # the ignored region is drawn
        page.wait_for_timeout(500)
        deadline -= 1
    page.locator(".st-key-att-confirm button").click()
    expect_text(page, ".st-key-att-grid", "1 of 1 confirmed", LONG)
    page.locator(".st-key-att-finetune button").click()
    expect_text(page, ".st-key-att-status", re.compile(r"Finished: version v1\b"), LONG)
    expect_text(page, ".st-key-sb-version", "+ counterexamples (3 per marked image, 3 made)", LONG)
    _sys.path.insert(0, str(ROOT))
    from core.store import Store

    version = Store(server.workspace).versions(wb_id)[-1]
    assert version.number == 1
    assert version.feedback["counterexamples"]["k"] == 3 and version.feedback["counterexamples"]["made"] == 3
    assert page.locator('[data-testid="stException"]').count() == 0
