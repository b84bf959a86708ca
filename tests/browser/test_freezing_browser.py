"""Training monitor and layer freezing in a real browser: start training, see the loss chart
update at least twice, freeze a layer while training runs, and see the freeze marker."""
from __future__ import annotations

import re

from browser_helpers import Page, expect, expect_text, live

LONG = 90_000
CHART = ".st-key-frz-chart"
# the number of loss points plotted: plotly keeps the decoded traces on the graph div as
# _fullData (its .data holds the still-encoded arrays that plotly 7 sends as bdata)
# (the chart is scrolled into view: plotly draws a chart only once it is on screen)
LOSS_POINTS = f"""() => {{
  const charts = [...document.querySelectorAll('{live(CHART)}')];
  const chart = charts[charts.length - 1];
  if (!chart) return 0;
  chart.scrollIntoView({{block: "center"}});
  const gd = chart.querySelector('.js-plotly-plot');
  return gd && gd._fullData && gd._fullData.length ? gd._fullData[0].x.length : 0;
}}"""


def wait_more_points(page: Page, than: int) -> int:
    """The point count once it exceeds ``than``, read in the same poll that saw it (a second
    read could catch the chart mid-redraw)."""
    handle = page.wait_for_function(f"(() => {{ const n = ({LOSS_POINTS})(); return n > {than} ? n : 0; }})()",
                                    timeout=LONG)
    return int(handle.json_value())


def test_live_training_then_freeze_a_layer_shows_the_marker(page: Page, app_url: str):
    page.goto(app_url.rstrip("/") + "/freezing")
    expect(page.locator(".st-key-frz-panel")).to_be_visible(timeout=LONG)
    expect_text(page, ".st-key-frz-groups", "conv1", LONG)
    epochs = page.locator(".st-key-frz-epochs input")
    epochs.fill("200")  # long enough to act while it runs; stopped below
    epochs.press("Tab")
    page.locator(".st-key-frz-start button").click()
    expect_text(page, ".st-key-frz-status", re.compile(r"Training: step \d+"), LONG)

    first = wait_more_points(page, 0)
    second = wait_more_points(page, first)  # the chart was redrawn with more steps
    third = wait_more_points(page, second)  # and again
    assert first < second < third

    page.locator(live(".st-key-frz-g-conv1") + " label").last.click()  # freeze conv1 while it trains
    expect_text(page, ".st-key-frz-live", "froze conv1", LONG)  # "Step N: froze conv1."
    expect_text(page, CHART, "froze conv1", LONG)  # the marker's label on the loss chart
    # the dotted line: polled, as the chart is redrawn on every poll of the running job (a
    # single count once failed in CI's full run, the label found while a redraw was under way)
    page.locator(live(CHART)).last.scroll_into_view_if_needed()
    expect(page.locator(live(CHART) + " .js-plotly-plot .shapelayer path").first).to_be_attached(timeout=LONG)

    page.locator(live(".st-key-frz-status") + " button").filter(has_text="Stop").last.click()
    # a stopped run makes no version by itself; the user keeps the partial result explicitly
    expect_text(page, ".st-key-frz-status", re.compile(r"Stopped: .*current version is still v0"), LONG)
    page.locator(live(".st-key-frz-status")).get_by_role("button", name="Keep as new version").click()
    expect_text(page, ".st-key-sb-version", re.compile(r"Model version:\s*v1\b"), LONG)
    expect_text(page, ".st-key-frz-status", re.compile(r"Kept the partial result as version v1\b"), LONG)
    assert page.locator('[data-testid="stException"]').count() == 0
