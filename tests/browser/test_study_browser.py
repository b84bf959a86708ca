"""User-study mode in a real browser (issue 14): the admin creates a click vs polygon study
with two participants; each participant, in their own browser context, goes through both
conditions in their own (different) order and the questionnaires; the export holds one row per
annotation with its seconds and condition, and the SUS scores computed from the answers."""
from __future__ import annotations

import csv
import io
import json
import re
import sys
import zipfile

from browser_helpers import ROOT, Page, expect, expect_text, live

LONG = 90_000
PASSWORD = "study-pw"


def admin_login(page: Page, url: str) -> None:
    page.goto(f"{url}/study-admin")
    page.get_by_label("Password", exact=True).fill(PASSWORD, timeout=LONG)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_label("Study name")).to_be_visible(timeout=LONG)


def set_number(page: Page, key: str, value: int) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Tab")


def answer_questionnaire(page: Page, groups: int) -> None:
    """Answer every question of the form on screen ("4" on the 1-5 scales, the first option of a
    choice or a NASA-TLX scale) and submit. ``groups``: its number of radio questions, awaited before answering."""
    form = page.locator(live(".st-key-study-questionnaire")).first
    expect(form.get_by_role("radiogroup")).to_have_count(groups, timeout=LONG)
    for i in range(groups):
        group = form.get_by_role("radiogroup").nth(i)
        labels = group.locator("label")
        (labels.nth(3) if labels.count() == 5 else labels.first).click()
        expect(group.get_by_role("radio", checked=True)).to_have_count(1)
    page.get_by_role("button", name="Submit").click()


def annotate(page: Page, mode: str) -> None:
    if mode == "click":
        img = page.locator(".st-key-study-task .sb-click-wrap img")
        expect(img).to_be_visible(timeout=LONG)
        box = img.bounding_box()
        img.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
    else:
        canvas = page.locator(".st-key-study-task canvas").last  # fabric's upper canvas takes the clicks
        expect(canvas).to_be_visible(timeout=LONG)
        page.wait_for_timeout(1500)  # fabric.js binds its handlers after the canvas shows
        box = canvas.bounding_box()
        points = [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3)]  # back to the first point closes it
        for x, y in points:
            canvas.click(position={"x": box["width"] * x, "y": box["height"] * y})
            page.wait_for_timeout(400)  # a person's pace: faster clicks can merge into a double click
    confirm = page.locator(".st-key-study-confirm button")
    expect(confirm).to_be_enabled(timeout=LONG)
    confirm.click()


def participant(page: Page, url: str, token: str, order: list[str]) -> None:
    page.goto(f"{url}/study-admin?study={token}")  # a token reaches its own steps only, whatever the path
    expect(page.get_by_role("heading", name="Welcome")).to_be_visible(timeout=LONG)
    assert page.get_by_role("heading", name="Study admin").count() == 0
    page.goto(f"{url}/?study={token}")
    page.get_by_role("button", name="Start").click(timeout=LONG)
    for k, mode in enumerate(order):
        expect_text(page, ".st-key-study-progress", f"condition {k + 1} of 2, image 1 of 1", LONG)
        assert not page.locator('[data-testid="stSidebar"]').is_visible()  # no dataset or page switching
        annotate(page, mode)
        page.get_by_role("button", name="Continue").click(timeout=LONG)
        for step, groups in ((3, 10), (4, 6)):  # SUS, then NASA-TLX's six scales (none chosen at first)
            expect_text(page, ".st-key-study-progress", f"Step {3 * k + step} of 9", LONG)
            expect_text(page, ".st-key-study-progress", f"questionnaire after condition {k + 1} of 2", LONG)
            answer_questionnaire(page, groups)
    expect_text(page, ".st-key-study-progress", "Step 8 of 9", LONG)
    answer_questionnaire(page, 6)  # the final one: seed 001's items for these two conditions (5 Likert, the choice)
    expect(page.get_by_text("You have finished the study")).to_be_visible(timeout=LONG)
    assert page.locator('[data-testid="stException"]').count() == 0


def test_admin_creates_a_study_and_two_participants_complete_it(start_server, make_workspace, new_context):
    server = start_server(make_workspace("ws-study"), extra_env={"STEERBOARD_ADMIN_PASSWORD": PASSWORD})
    admin = new_context().new_page()
    admin_login(admin, server.url)
    admin.get_by_label("Study name").fill("click vs polygon")
    admin.locator(".st-key-sa-data").get_by_role("combobox").click()
    admin.get_by_role("option", name="digits", exact=True).click()
    set_number(admin, "sa-c0-budget", 1)
    set_number(admin, "sa-c1-budget", 1)
    admin.get_by_role("button", name="Create study").click()
    expect(admin.get_by_text("Created study 'click vs polygon' with 2 participant links")).to_be_visible(timeout=LONG)

    sys.path.insert(0, str(ROOT))
    from core.session.store import Store
    from core.study.store import StudyStore

    studies = StudyStore(Store(server.workspace))
    study = next(s for s in studies.studies() if s["name"] == "click vs polygon")
    people = studies.participants(study["id"])
    assert [p.conditions for p in people] == [["click", "polygon"], ["polygon", "click"]]
    for p in people:
        participant(new_context().new_page(), server.url, p.token, p.conditions)

    admin.get_by_role("tab", name="Studies").click()
    admin.locator(live(".st-key-sa-refresh") + " button").first.click()
    expect_text(admin, ".st-key-sa-results", "Seconds per image", LONG)
    with admin.expect_download() as info:
        admin.locator(live(".st-key-sa-export") + " button").first.click()
    zf = zipfile.ZipFile(io.BytesIO(open(info.value.path(), "rb").read()))
    annotations = list(csv.DictReader(io.StringIO(zf.read("annotations.csv").decode())))
    assert len(annotations) == 4
    assert sorted((r["participant"], r["condition"]) for r in annotations) == [
        ("1", "click"), ("1", "polygon"), ("2", "click"), ("2", "polygon")]  # numbered from 1, as on the pages
    assert all(float(r["seconds"]) > 0 for r in annotations)
    events = list(csv.DictReader(io.StringIO(zf.read("events.csv").decode())))
    closes = [e for e in events if e["kind"] == "polygon_close"]
    vertices = [e for e in events if e["kind"] == "polygon_point"]
    assert len(closes) == 2 and vertices, "each closed polygon logs its vertices and its closing click"
    assert all(json.loads(e["payload"]).get("timed_at_close") for e in vertices)  # no vertex time is claimed
    questionnaires = list(csv.DictReader(io.StringIO(zf.read("questionnaires.csv").decode())))
    sus = [r for r in questionnaires if r["instrument"] == "sus"]
    assert len(sus) == 4 and all(float(r["score"]) == 50.0 for r in sus)  # all answers 4: (3*5 + 1*5) * 2.5
    assert not any(p.token in zf.read(name).decode() for name in zf.namelist() for p in people)
    assert re.search(r"click", zf.read("manifest.json").decode())
