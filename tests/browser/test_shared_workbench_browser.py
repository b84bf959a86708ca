"""One live workbench per id, in a real browser: two tabs on one ?wb= share the running job
and the current version; a refresh reattaches to the job and Stop works; a diverged run makes
no version; a server killed mid-run says so after the restart, in every tab until someone
dismisses it, and loses nothing saved."""
from __future__ import annotations

import re

from browser_helpers import Page, expect, expect_text, live
from test_home_browser import (
    LONG,
    METRICS,
    STATUS,
    TRAIN,
    assert_no_exception,
    expect_version,
    listed_versions,
    open_home,
    start_training,
    train_version,
    wait_step_above,
    workbench_id,
)

SIDEBAR_JOB = ".st-key-sb-job"
NOTICE = ".st-key-interrupted-notice"


def train_button(page: Page):
    return page.locator(".st-key-train-panel").get_by_role("button", name="Train", exact=True)


def test_two_tabs_on_one_workbench_share_the_job_and_the_version(new_context, app_url: str):
    one = new_context().new_page()
    wb = open_home(one, app_url)
    two = new_context().new_page()  # another browser profile, same link: a colleague's tab
    two.goto(f"{app_url}/?wb={wb}")
    expect_text(two, METRICS, "Test accuracy", LONG)
    assert workbench_id(two) == wb
    start_training(one, epochs=8)
    # the other tab was idle when the job started: it notices, shows progress and refuses a second start
    expect_text(two, SIDEBAR_JOB, re.compile(r"step \d+ / \d+"), LONG)
    expect_text(two, STATUS, re.compile(r"Training: step \d+ / \d+"), LONG)
    expect(two.locator(live(".st-key-train-panel")).get_by_role("button", name="Train", exact=True)).to_be_disabled()
    expect(two.locator(STATUS).get_by_role("button", name="Stop").first).to_be_visible()
    # both agree on the version the job made
    expect_text(one, STATUS, "Finished: version v1", TRAIN)
    expect_version(one, 1)
    expect_version(two, 1, timeout=TRAIN)
    assert listed_versions(one) == listed_versions(two) == ["v0", "v1"]
    for p in (one, two):
        assert_no_exception(p)


def test_refresh_during_training_brings_back_progress_and_stop(page: Page, app_url: str):
    wb = open_home(page, app_url)
    start_training(page, epochs=100)
    wait_step_above(page, 0)
    page.reload()
    expect_text(page, STATUS, re.compile(r"Training: step \d+ / \d+"), LONG)
    assert workbench_id(page) == wb
    step = wait_step_above(page, 0)
    wait_step_above(page, step)  # still polling after the refresh
    page.locator(STATUS).get_by_role("button", name="Stop").first.click()
    expect_text(page, STATUS, re.compile(r"Stopped: .*current version is still v0"), LONG)
    expect(page.locator(live(STATUS)).get_by_role("button", name="Keep as new version")).to_be_visible()
    expect_version(page, 0)
    expect(train_button(page)).to_be_enabled()
    assert listed_versions(page) == ["v0"]
    assert_no_exception(page)


def test_learning_rate_1_diverges_and_adds_no_version(page: Page, app_url: str):
    open_home(page, app_url)
    panel = page.locator(".st-key-train-panel")
    panel.get_by_label("Learning rate", exact=True).fill("1.0")
    panel.get_by_label("Learning rate", exact=True).press("Tab")
    start_training(page, epochs=2)
    expect_text(page, STATUS, re.compile(r"Diverged after \d+ steps?: the (classification )?loss"), TRAIN)
    expect_text(page, STATUS, "No version was made; the current version is still v0", LONG)
    expect(page.locator(live(STATUS)).get_by_text("Finished")).to_have_count(0)
    expect_version(page, 0)
    assert listed_versions(page) == ["v0"]
    assert_no_exception(page)


def test_server_killed_mid_run_says_interrupted_in_every_tab_until_dismissed(start_server, new_context):
    from core.session.store import Store

    server = start_server()
    page = new_context().new_page()
    wb = open_home(page, server.url)
    train_version(page, 1)
    Store(server.workspace).add_annotations(wb, "latent", [(int(e), {"source": [0.0, 0.0], "target": [1.0, 1.0]})
                                                           for e in (3, 5)])
    start_training(page, epochs=200)  # long: still running when the server dies
    wait_step_above(page, 5)
    server.kill()  # SIGKILL, mid-run
    server.start()  # same workspace, same port
    page.goto(f"{server.url}/?wb={wb}")
    expect_text(page, METRICS, "Test accuracy", LONG)
    said = re.compile(r"was interrupted at step \d+ of \d+ by a server restart; nothing after version v1 was saved")
    expect(page.locator(live(NOTICE)).get_by_text(said)).to_have_count(1, timeout=LONG)
    assert workbench_id(page) == wb
    expect_version(page, 1)
    assert listed_versions(page) == ["v0", "v1"]  # v1 kept, no half-trained v2
    # the notice is the workbench's, not the first tab's: a refresh and another browser see it too
    page.reload()
    expect_text(page, METRICS, "Test accuracy", LONG)
    expect(page.locator(live(NOTICE)).get_by_text(said)).to_have_count(1, timeout=LONG)
    other = new_context().new_page()
    other.goto(f"{server.url}/latent?wb={wb}")
    expect(other.locator(live(NOTICE)).get_by_text(said)).to_have_count(1, timeout=LONG)
    expect_text(other, ".st-key-lat-moves", "Moves: 2", LONG)  # annotations survived
    other.locator(live(NOTICE)).get_by_role("button", name="Dismiss").click()
    expect(other.get_by_text("was interrupted at step")).to_have_count(0, timeout=LONG)
    page.reload()  # dismissed once: gone for every tab
    expect_text(page, METRICS, "Test accuracy", LONG)
    expect(page.get_by_text("was interrupted at step")).to_have_count(0)
    for p in (page, other):
        assert_no_exception(p)
