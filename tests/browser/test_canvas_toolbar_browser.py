"""The drawable canvas's toolbar (Edit, Undo, Redo, Delete) is visible without hovering and sits
in its own row above the canvas, clear of the caption above it (issue 29: it was invisible
until hovered, and then covered the caption saying to turn on Edit)."""
from __future__ import annotations

from browser_helpers import Page, expect

LONG = 90_000
CANVAS = ".st-key-lat-canvas"


def _box(locator) -> dict:
    box = locator.bounding_box()
    assert box is not None, "not on screen"
    return box


def test_latent_canvas_toolbar_is_always_visible_and_covers_nothing(page: Page, app_url: str):
    page.set_viewport_size({"width": 1400, "height": 1100})
    page.goto(app_url.rstrip("/") + "/latent")
    expect(page.locator(".st-key-lat-map .js-plotly-plot").first).to_be_visible(timeout=LONG)
    # while a rerun replaces the tab bar, Streamlit briefly shows two copies of it: wait for one
    expect(page.get_by_role("tab", name="Drag a point")).to_have_count(1, timeout=LONG)
    page.get_by_role("tab", name="Drag a point").click()
    canvas = page.locator(f"{CANVAS} canvas.upper-canvas")
    expect(canvas).to_be_visible(timeout=LONG)
    page.mouse.move(2, 2)  # the pointer far from the canvas: nothing is hovered
    toolbar = page.locator(f"{CANVAS} .dc-toolbar")
    page.wait_for_function("""() => {
        const host = document.querySelector('.st-key-lat-canvas [data-testid=stBidiComponentIsolated]');
        const bar = host && host.shadowRoot && host.shadowRoot.querySelector('.dc-toolbar');
        return bar && getComputedStyle(bar).opacity === '1';
    }""", timeout=LONG)
    edit = page.locator(f"{CANVAS} button[aria-label=Edit]")
    expect(edit).to_be_visible()
    bar, pic = _box(toolbar), _box(canvas)
    caption = _box(page.get_by_text("Turn on Edit in the canvas toolbar"))
    assert bar["y"] + bar["height"] <= pic["y"] + 0.5, (bar, pic)  # above the canvas, not over it
    assert bar["y"] >= caption["y"] + caption["height"] - 0.5, (bar, caption)  # below the caption, not over it
    assert bar["x"] + bar["width"] <= pic["x"] + pic["width"] + 0.5  # within the canvas's width
    page.mouse.move(pic["x"] + 20, pic["y"] + 20)  # hovering does not move it onto the caption again
    page.wait_for_timeout(400)
    hovered = _box(toolbar)
    assert abs(hovered["y"] - bar["y"]) < 0.5, (hovered, bar)
    edit.click()  # and it works: Edit toggles on
    expect(edit).to_have_attribute("aria-pressed", "true")
