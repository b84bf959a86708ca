"""Latent space in a real browser: drag a point on the canvas, press Update, see the new
version and the summary."""
from __future__ import annotations

import re

from browser_helpers import Page, expect, expect_text

LONG = 90_000
UPDATE = 240_000
MOVES = ".st-key-lat-moves"
RESULT = ".st-key-lat-result"
EXCEPTION = '[data-testid="stException"]'

# The canvas draws its objects (the draggable circles) on their own layer; the first opaque
# pixel found scanning from the top is the top of a circle's stroke, whose centre is below it.
FIND_CIRCLE = """() => {
  const host = document.querySelector('.st-key-lat-canvas [data-testid=stBidiComponentIsolated]');
  if (!host || !host.shadowRoot) return null;
  const c = host.shadowRoot.querySelector('canvas.dc-canvas.lower-canvas');
  if (!c) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
    if (d[4 * (y * c.width + x) + 3] > 200) {
      const r = c.getBoundingClientRect();
      return {x: r.left + x * r.width / c.width, y: r.top + (y + 8) * r.height / c.height};
    }
  }
  return null;
}"""


def test_drag_a_point_then_update_makes_version_and_summary(page: Page, app_url: str):
    page.goto(app_url.rstrip("/") + "/latent")
    expect(page.locator(".st-key-lat-workspace .js-plotly-plot")).to_be_visible(timeout=LONG)
    expect_text(page, MOVES, "Moves: 0", LONG)
    page.get_by_role("tab", name="Drag a point").click()
    page.wait_for_function(f"({FIND_CIRCLE})() !== null", timeout=LONG)
    point = page.evaluate(FIND_CIRCLE)
    page.locator(".st-key-lat-canvas button[aria-label=Edit]").click()
    page.mouse.move(point["x"], point["y"])
    page.mouse.down()
    page.mouse.move(point["x"] + 60, point["y"] + 70, steps=12)
    page.mouse.up()
    expect_text(page, MOVES, "Moves: 1", LONG)
    # right after a rerun Streamlit may briefly keep a stale copy of the button: click the live one
    page.locator('.st-key-lat-update:not([data-stale="true"]) button').last.click()
    expect_text(page, RESULT, "Moved images now right", UPDATE)
    expect_text(page, RESULT, re.compile(r"\d+ / 1"), LONG)
    expect_text(page, ".st-key-sb-version", re.compile(r"Model version:\s*v1\b"), LONG)
    assert page.locator(EXCEPTION).count() == 0
