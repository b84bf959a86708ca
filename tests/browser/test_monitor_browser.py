"""Training monitor in a real browser: box-select points in the activation embedding, retrain
on them, and see the report and the new version."""
from __future__ import annotations

import re

from browser_helpers import Page, expect, expect_text, live

LONG = 90_000
RETRAIN = 240_000
CHART = ".st-key-mon-embedding"


def test_box_select_in_embedding_then_retrain_reports(page: Page, app_url: str):
    page.goto(app_url.rstrip("/") + "/monitor")
    expect(page.locator(".st-key-mon-panel")).to_be_visible(timeout=LONG)
    page.locator(".st-key-mon-view").get_by_text("Embedding", exact=True).click()  # the view switch
    # the first (cold) layout takes seconds: a status box says which step and how far, with its bar open
    expect_text(page, ".st-key-mon-emb-progress", re.compile(r"step [12] of 2: (Reading the layer|Laying out)"), LONG)
    expect(page.locator(".st-key-mon-emb-progress [data-testid='stProgress']").first).to_be_visible(timeout=LONG)
    expect(page.locator(".st-key-mon-emb-progress")).to_have_count(0, timeout=LONG)  # gone once drawn
    expect_text(page, ".st-key-mon-selection", "Box- or lasso-select points", LONG)
    page.locator(".st-key-mon-emb-tool").get_by_text("box", exact=True).click()
    page.wait_for_function(f"""() => {{
        const g = [...document.querySelectorAll('{live(CHART)} .js-plotly-plot')].pop();
        return !!g && !!g._fullLayout && g._fullLayout.dragmode === 'select';
    }}""", timeout=LONG)  # the chart was redrawn in box mode
    plot = page.locator(live(CHART) + " .js-plotly-plot .nsewdrag").last
    expect(plot).to_be_visible(timeout=LONG)
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()
    # a box over the middle half of the plot area: the layout is centred, so it holds points
    x0, y0 = box["x"] + 0.25 * box["width"], box["y"] + 0.25 * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 0.5 * box["width"], y0 + 0.5 * box["height"], steps=10)
    page.mouse.up()
    expect_text(page, ".st-key-mon-selection", re.compile(r"Selected: \d+ examples, \d+ misclassified"), LONG)
    page.locator(live(".st-key-mon-retrain-go") + " button").last.click()
    expect_text(page, ".st-key-mon-report", re.compile(r"\d+ / \d+ selected examples now right"), RETRAIN)
    expect_text(page, ".st-key-sb-version", re.compile(r"Model version:\s*v1\b"), LONG)
    assert page.locator('[data-testid="stException"]').count() == 0
