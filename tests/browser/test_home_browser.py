"""Home in a real browser: metrics, live training, versions across refresh, separate
workbenches per browser, and no lost version when the server dies mid-training."""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

from browser_helpers import Page, expect, expect_text

LONG = 60_000  # ms: generous, the CI machine has 2 cores shared with Chromium and the server
TRAIN = 120_000  # ms: a short training run under load
ACCURACY = re.compile(r"\d+\.\d%")
STEP = re.compile(r"step (\d+) / (\d+)")

# While the live fragment reruns, Streamlit can briefly keep the previous copy of an element
# in the DOM, marked data-stale="true" (seen: two .st-key-train-chart, one stale with height
# 0). Match only the current copy, so a locator never resolves to two elements.
METRICS = ".st-key-home-metrics"
STATUS = '.st-key-train-status:not(:has([data-stale="true"]))'
CHART = '.st-key-train-chart:not([data-stale="true"])'
SIDEBAR_VERSION = ".st-key-sb-version"
VERSIONS = ".st-key-versions"
EXCEPTION = '[data-testid="stException"]'


# ----------------------------------------------------------------------------- helpers
def open_home(page: Page, url: str) -> str:
    """Go to ``url`` and wait for Home's metrics with an accuracy; returns the ``?wb=`` id."""
    page.goto(url)
    expect_text(page, METRICS, "Test accuracy", LONG)
    expect_text(page, METRICS, ACCURACY, LONG)
    page.wait_for_url(re.compile(r"[?&]wb=[0-9a-f]{12}"), timeout=LONG)
    return workbench_id(page)


def workbench_id(page: Page) -> str:
    ids = parse_qs(urlparse(page.url).query).get("wb", [])
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{12}", ids[0]), f"no ?wb=<12 hex> in {page.url}"
    return ids[0]


def assert_no_exception(page: Page) -> None:
    errors = page.locator(EXCEPTION)
    assert errors.count() == 0, "Streamlit exception on the page:\n" + "\n---\n".join(errors.all_inner_texts())


def expect_version(page: Page, number: int, timeout: int = LONG) -> None:
    expect_text(page, SIDEBAR_VERSION, re.compile(rf"Model version:\s*v{number}\b"), timeout)


def current_step(page: Page) -> int | None:
    """The step number in the live status text, or None if it shows none right now."""
    try:
        text = page.locator(STATUS).inner_text(timeout=1_000)
    except Exception:  # the fragment is being redrawn
        return None
    m = STEP.search(text)
    return int(m.group(1)) if m else None


def wait_step_above(page: Page, previous: int, timeout: int = LONG) -> int:
    """Wait (in the browser) until the status shows a step number above ``previous``."""
    page.wait_for_function(
        """([sel, prev]) => {
            const el = document.querySelector(sel);
            const m = el && el.innerText.match(/step (\\d+) \\/ \\d+/);
            return !!m && Number(m[1]) > prev;
        }""",
        arg=[STATUS, previous], timeout=timeout, polling=100,
    )
    step = current_step(page)
    assert step is not None and step > previous, f"step went from {previous} to {step}"
    return step


def start_training(page: Page, epochs: int, batch: int | None = None) -> None:
    panel = page.locator(".st-key-train-panel")
    expect(panel).to_be_visible(timeout=LONG)
    epochs_input = panel.get_by_label("Epochs", exact=True)
    epochs_input.fill(str(epochs))
    epochs_input.press("Tab")
    if batch is not None:
        panel.get_by_label("Batch size").click()
        page.get_by_role("option", name=str(batch), exact=True).click()
    button = panel.get_by_role("button", name="Train", exact=True)
    expect(button).to_be_enabled()
    button.click()
    # running: the status shows "<description>: step N / M ..." and a Stop button
    expect_text(page, STATUS, STEP, LONG)
    expect(page.locator(STATUS).get_by_role("button", name="Stop").first).to_be_visible()
    m = STEP.search(page.locator(STATUS).inner_text())
    if m:  # the job got the typed epochs: total steps = epochs x steps per epoch
        assert int(m.group(2)) % epochs == 0, f"{m.group(0)} is not a whole number of {epochs} epochs"


def train_version(page: Page, number: int, epochs: int = 1, batch: int | None = 256) -> None:
    """Train to completion (few large steps: quick) and wait until the page shows version ``number``."""
    start_training(page, epochs, batch)
    expect_text(page, STATUS, f"Finished: version v{number}", TRAIN)
    expect_version(page, number)


def listed_versions(page: Page) -> list[str]:
    """Version names in the Versions tab's table (Glide data grid keeps an accessible copy
    of the visible cells in the DOM: ``[role=gridcell]``)."""
    page.get_by_role("tab", name="Versions").click()
    panel = page.locator(VERSIONS)
    expect(panel).to_be_visible(timeout=LONG)
    cells = panel.locator('[data-testid="stDataFrame"] [role="gridcell"]')
    expect(cells.first).to_be_attached(timeout=LONG)
    texts = [t.strip() for t in cells.all_text_contents()]
    return [t for t in texts if re.fullmatch(r"v\d+", t)]


# ----------------------------------------------------------------------------- tests
def test_home_shows_accuracy(page: Page, app_url: str):
    open_home(page, app_url)
    metrics = page.locator(METRICS).inner_text()
    assert ACCURACY.search(metrics), metrics
    expect_version(page, 0)
    expect(page.locator(".st-key-train-panel").get_by_role("button", name="Train", exact=True)).to_be_visible()
    for tab in ("Per class", "Examples", "Versions", "Dataset"):
        expect(page.get_by_role("tab", name=tab)).to_be_visible()
    page.get_by_role("tab", name="Examples").click()  # drawn only once opened (a rerun)
    expect(page.locator(".st-key-examples-grid img").first).to_be_visible(timeout=LONG)
    assert_no_exception(page)


def test_training_shows_live_progress_and_new_version(page: Page, app_url: str):
    open_home(page, app_url)
    start_training(page, epochs=3)  # 3 x 17 steps of 64: seconds, several redraws at 2 Hz
    first = current_step(page)
    if first is None:
        first = wait_step_above(page, -1)
    chart = page.locator(CHART).last
    expect(chart).to_be_visible(timeout=LONG)  # drawn once the first step is recorded
    second = wait_step_above(page, first)  # the fragment redraws while the job runs
    third = wait_step_above(page, second)
    assert first < second < third
    expect_text(page, CHART, "Batch loss", LONG)  # the plotly figure's subplot title
    expect_text(page, STATUS, "Finished: version v1", TRAIN)
    expect_text(page, STATUS, re.compile(r"test accuracy \d+\.\d%"), LONG)
    expect_version(page, 1)
    expect_text(page, METRICS, "v1", LONG)
    assert_no_exception(page)


def test_refresh_keeps_versions(page: Page, app_url: str):
    wb = open_home(page, app_url)
    train_version(page, 1)
    page.reload()
    expect_text(page, METRICS, ACCURACY, LONG)
    assert workbench_id(page) == wb
    expect_version(page, 1)
    assert listed_versions(page) == ["v0", "v1"]
    assert_no_exception(page)


def test_two_browsers_get_separate_workbenches(new_context, app_url: str):
    one, two = new_context().new_page(), new_context().new_page()
    wb_one = open_home(one, app_url)
    wb_two = open_home(two, app_url)
    assert wb_one != wb_two
    train_version(one, 1)
    # the other browser neither sees v1 now nor after a refresh
    two.reload()
    expect_text(two, METRICS, ACCURACY, LONG)
    assert workbench_id(two) == wb_two
    expect_version(two, 0)
    assert listed_versions(two) == ["v0"]
    assert listed_versions(one) == ["v0", "v1"]
    for p in (one, two):
        assert_no_exception(p)


def test_server_killed_mid_training_loses_no_finished_version(start_server, page: Page):
    server = start_server()
    wb = open_home(page, server.url)
    train_version(page, 1)
    start_training(page, epochs=200)  # long: still running when the server dies
    wait_step_above(page, 0)
    server.kill()  # SIGKILL, mid-run
    server.start()  # same workspace, same port
    page.goto(f"{server.url}/?wb={wb}")
    expect_text(page, METRICS, ACCURACY, LONG)
    assert workbench_id(page) == wb, "the saved link did not reopen the same workbench"
    expect_version(page, 1)
    assert listed_versions(page) == ["v0", "v1"]  # v1 kept, no half-trained v2
    expect(page.get_by_text("started a fresh workbench")).to_have_count(0)
    assert_no_exception(page)
