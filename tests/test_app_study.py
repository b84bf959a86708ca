"""AppTest of user-study mode: the admin page behind its password, and a participant's steps."""
from __future__ import annotations

import time

import pytest
from apptest_helpers import ROOT, app_workspace, new_app, no_exceptions  # noqa: F401  (fixture)

ADMIN = str(ROOT / "pages" / "study_admin.py")
DESIGN = {"task": "attention", "dataset": "digits", "arch": "seed-cnn",
          "conditions": [{"name": "click", "settings": {"mode": "click", "sampler": "random", "epochs": 1}, "budget": 2},
                         {"name": "polygon", "settings": {"mode": "polygon", "sampler": "random", "epochs": 1},
                          "budget": 1}],
          "questionnaires": {"after_each": ["sus"], "final": ["tlx"]}}


def _texts(at) -> str:
    parts = list(at.markdown) + list(at.caption) + list(at.info) + list(at.error) + list(at.success) + list(at.title)
    return "\n".join(str(p.value) for p in parts)


@pytest.mark.slow
def test_admin_without_a_password_set_shows_only_how_to_set_one(app_workspace, monkeypatch):
    monkeypatch.delenv("STEERBOARD_ADMIN_PASSWORD", raising=False)
    at = new_app(app_workspace).run()
    at.switch_page(ADMIN).run()
    no_exceptions(at)
    assert "STEERBOARD_ADMIN_PASSWORD" in _texts(at)
    assert not at.main.text_input and not at.main.dataframe and not at.main.tabs


def test_admin_logs_in_and_creates_a_counterbalanced_study(app_workspace, monkeypatch):
    monkeypatch.setenv("STEERBOARD_ADMIN_PASSWORD", "s3cret")
    at = new_app(app_workspace).run()
    at.switch_page(ADMIN).run()
    at.text_input(key="study-password").input("wrong")
    at.button[0].click().run()
    assert "Wrong password" in _texts(at) and not at.tabs
    at.text_input(key="study-password").input("s3cret")
    at.button[0].click().run()
    no_exceptions(at)
    at.text_input(key="sa-name").input("click vs polygon")
    at.selectbox(key="sa-data").set_value("digits")
    at.number_input(key="sa-people").set_value(3)
    at.number_input(key="sa-c0-budget").set_value(4)
    # counterexamples off by default, as on the Attention page
    assert not at.checkbox(key="sa-c0-cex").value and not at.checkbox(key="sa-c1-cex").value
    at.checkbox(key="sa-c0-cex").check()
    at.button(key="FormSubmitter:study-new-Create study").click().run()
    no_exceptions(at)
    assert "Created study 'click vs polygon' with 3 participant links" in _texts(at)
    from app.state import get_store
    from core.study.store import StudyStore

    studies = StudyStore(get_store())
    study = next(s for s in studies.studies() if s["name"] == "click vs polygon")
    assert [c["budget"] for c in study["design"]["conditions"]] == [4, 16]
    assert [c["settings"]["mode"] for c in study["design"]["conditions"]] == ["click", "polygon"]
    assert [c["settings"]["counterexamples"] for c in study["design"]["conditions"]] == [True, False]
    # the Likert items were left empty: seed 001's questionnaire, written for these two conditions (both
    # use the same sampler, so no item compares samplers)
    texts = [i["text"] for i in study["design"]["likert_items"]]
    assert "Annotating in the 'click' part was difficult." in texts and not any("sampling" in t for t in texts)
    assert study["design"]["likert_items"][-2]["options"] == ["click", "polygon"]
    orders = [p.conditions for p in studies.participants(study["id"])]
    assert orders[0] != orders[1]
    table = at.dataframe[0].value
    assert len(table) == 3 and all("?study=" in link for link in table["link"])


def ss_key(flow, name: str, *parts) -> str:
    """The participant page's session-state key (app.study_participant.ss_key, which cannot be
    imported outside a script run)."""
    return "-".join(["study", flow.token[:8].replace("_", "-"), str(flow.index), name, *map(str, parts)])


def _participant(app_workspace, token):
    return new_app(app_workspace, query={"study": token}, timeout=120).run()


@pytest.mark.slow
def test_a_participant_goes_through_a_condition_and_a_questionnaire(app_workspace, monkeypatch):
    at = new_app(app_workspace).run()  # the server's caches point at this workspace
    from app.state import get_registry, get_store
    from core.study.attention import AttentionCondition
    from core.study.flow import ParticipantFlow
    from core.study.results import study_tables
    from core.study.store import StudyStore

    studies = StudyStore(get_store())
    study_id, tokens = studies.create_study("AppTest", DESIGN, participants=1)
    token = tokens[0]
    at = _participant(app_workspace, token)
    no_exceptions(at)
    assert "Welcome" in _texts(at) and "condition" not in _texts(at).lower().split("introduction")[0]
    assert not at.metric  # no Home, no sidebar workbench
    at.button(key="study-start").click().run()
    no_exceptions(at)
    assert "condition 1 of 2, image 1 of 2" in _texts(at)
    for k in range(2):
        flow = ParticipantFlow(studies, token)
        cond = AttentionCondition(flow, get_registry().get(flow.progress["workbenches"]["click"]))
        item = cond.current()
        if k == 0:
            # two clicks that reach the server in one request (the second during the first's rerun): the
            # trigger is the newest, its queue holds the one not acknowledged yet; both are applied and logged
            first = {"kind": "click", "x": 14.0, "y": 14.0, "button": 0, "n": 1}
            at.session_state[ss_key(flow, "img", item)] = {
                "click": {"x": 3.0, "y": 3.0, "button": 2, "n": 2, "queue": [first]}}
            at.run()
            draft = at.session_state[ss_key(flow, "draft", item)]
            assert draft["pos"] == [(14.0, 14.0)] and len(draft["neg"]) == 1, draft
        else:
            at.session_state[ss_key(flow, "draft", item)] = {"pos": [(14.0, 14.0)], "neg": [],
                                                                                "undo": [], "redo": []}
            at.run()
        at.button(key="study-confirm").click().run()
        no_exceptions(at)
    assert "This part is done" in _texts(at)
    at.button(key="study-finish").click().run()
    deadline = time.time() + 60
    while "Questionnaire" not in _texts(at) and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    no_exceptions(at)
    assert "Questionnaire" in _texts(at), _texts(at)
    at.button[0].click().run()  # submit with nothing answered: refused, nothing saved
    assert "Please answer every question" in _texts(at)
    assert studies.answers(study_id) == []
    for radio in at.radio:
        radio.set_value(4)
    at.button[0].click().run()
    no_exceptions(at)
    answers = studies.answers(study_id)
    assert answers[0]["instrument"] == "sus" and answers[0]["score"] == pytest.approx(50.0)
    assert "condition 2 of 2" in _texts(at)
    tables = study_tables(studies, study_id)
    rows = [r for r in tables["annotations"] if r["condition"] == "click"]
    assert len(rows) == 2 and all(r["seconds"] is not None for r in rows)
    assert sorted(r["gestures"] for r in rows) == [0, 2], rows  # both queued clicks were logged (the other draft was set by hand)
    assert sorted(r["marks"] for r in rows) == [1, 2], rows  # the points and regions each annotation keeps
    summary = next(r for r in tables["summary"] if r["condition"] == "click")
    assert summary["test_acc_pct"] is not None and summary["sus"] == pytest.approx(50.0)

    again = _participant(app_workspace, token)  # a refresh resumes where they were
    assert "condition 2 of 2, image 1 of 1" in _texts(again)

    # the admin sees the results: a box plot per measure the data has (no bias-conflicting accuracy on digits)
    monkeypatch.setenv("STEERBOARD_ADMIN_PASSWORD", "s3cret")
    admin = new_app(app_workspace).run()
    admin.switch_page(ADMIN).run()
    admin.text_input(key="study-password").input("s3cret")
    admin.button[0].click().run()
    box = admin.selectbox(key="sa-box-measure")
    assert box.options == ["Seconds per image", "Gestures per image", "Test accuracy after (%)",
                           "SUS score (0-100)"], box.options
    box.set_value("sus").run()
    no_exceptions(admin)
    import base64
    import json

    import numpy as np

    fig = json.loads(admin.get("plotly_chart")[0].proto.spec)
    assert fig["layout"]["title"]["text"] == "SUS score (0-100), by condition"
    ys = [t["y"] if isinstance(t["y"], list) else np.frombuffer(base64.b64decode(t["y"]["bdata"]), t["y"]["dtype"])
          for t in fig["data"]]  # plotly sends arrays base64-encoded
    assert [list(map(float, y)) for y in ys] == [[50.0]]  # the one SUS score so far, as in the export


def test_a_wrong_token_sees_nothing_of_the_study(app_workspace):
    at = _participant(app_workspace, "x" * 22)
    no_exceptions(at)
    assert "participant link is not valid" in _texts(at)
    assert not at.button and not at.metric


@pytest.mark.slow
def test_a_study_of_the_grid_task_runs_its_conditions(app_workspace):
    """A design whose conditions name no task take the design's (grid here): the participant page
    runs it (it refused every task but attention before)."""
    new_app(app_workspace).run()
    from app.state import get_store
    from core.study.flow import ParticipantFlow
    from core.study.store import StudyStore

    studies = StudyStore(get_store())
    design = {**DESIGN, "task": "grid",
              "conditions": [{"name": "a", "settings": {}, "budget": 1}, {"name": "b", "settings": {}, "budget": 1}]}
    _, tokens = studies.create_study("Grid study", design, participants=1)
    at = _participant(app_workspace, tokens[0])
    at.button(key="study-start").click().run()
    no_exceptions(at)
    assert not at.error and "Click the grid squares" in _texts(at), _texts(at)
    assert set(ParticipantFlow(studies, tokens[0]).progress.get("workbenches", {})) == {"a"}


def test_a_token_with_two_underscores_still_draws_the_click_image(app_workspace, monkeypatch):
    """token_urlsafe can give "__", which a bidirectional component's key must not hold: the page's
    keys replace "_" (this failed at random before, about once in 600 tokens)."""
    new_app(app_workspace).run()
    from app.state import get_store
    from core.study import store as study_store
    from core.study.store import StudyStore

    monkeypatch.setattr(study_store.secrets, "token_urlsafe", lambda n: "ab__cd_efghijklmnopqrstu")
    _, tokens = StudyStore(get_store()).create_study("Underscores", DESIGN, participants=1)
    assert "__" in tokens[0][:8]
    at = _participant(app_workspace, tokens[0])
    at.button(key="study-start").click().run()
    no_exceptions(at)
    assert "condition 1 of 2, image 1 of 2" in _texts(at)


def _at_step(app_workspace, design, kind: str, instrument: str | None = None):
    """A new participant of a study of ``design`` put straight at its first step of ``kind``."""
    new_app(app_workspace).run()
    from app.state import get_store
    from core.study.flow import ParticipantFlow
    from core.study.store import StudyStore

    studies = StudyStore(get_store())
    study_id, (token,) = studies.create_study("steps", design, participants=1)
    flow = ParticipantFlow(studies, token)
    index = next(i for i, s in enumerate(flow.steps) if s.kind == kind and (instrument is None or s.instrument == instrument))
    studies.set_progress(token, {"step": index})
    return studies, study_id, token


def test_tlx_starts_unanswered_and_an_untouched_form_is_refused(app_workspace):
    studies, study_id, token = _at_step(app_workspace, DESIGN, "questionnaire", "tlx")
    at = _participant(app_workspace, token)
    no_exceptions(at)
    scales = at.radio
    assert len(scales) == 6 and all(s.value is None for s in scales)  # no rating before one is given
    assert list(scales[0].options) == [str(v) for v in range(0, 101, 5)]
    at.button[0].click().run()  # sent untouched: refused, nothing saved
    assert "Please answer every question (missing: mental demand" in _texts(at)
    assert studies.answers(study_id) == []
    for s in at.radio[:5]:
        s.set_value(40)
    at.button[0].click().run()
    assert "missing: frustration)" in _texts(at) and studies.answers(study_id) == []
    at.radio[5].set_value(100)
    at.button[0].click().run()
    no_exceptions(at)
    (answer,) = studies.answers(study_id)
    assert answer["instrument"] == "tlx" and answer["score"] == pytest.approx((5 * 40 + 100) / 6)


def test_a_time_limit_counts_down_and_then_says_the_time_is_up(app_workspace):
    design = {**DESIGN, "conditions": [{**c, "time_limit_s": 600} for c in DESIGN["conditions"]]}
    studies, _, token = _at_step(app_workspace, design, "condition")
    at = _participant(app_workspace, token)
    no_exceptions(at)

    def shown() -> int:
        import re

        text = " ".join(c.value for c in at.caption if "Time left" in c.value)
        m = re.search(r"Time left in this part: \*\*(\d+):(\d\d)\*\*", text)
        assert m, _texts(at)
        return 60 * int(m[1]) + int(m[2])

    first = shown()
    assert 590 <= first <= 600
    progress = studies.participant(token).progress
    slot = next(iter(progress["started"]))
    studies.set_progress(token, {**progress, "started": {slot: progress["started"][slot] - 300}})
    at.run()
    assert 290 <= shown() <= first - 300
    studies.set_progress(token, {**progress, "started": {slot: progress["started"][slot] - 700}})
    at.run()
    no_exceptions(at)
    assert "The time for this part is up." in _texts(at) and shown() == 0


def test_a_participant_whose_workbench_was_deleted_gets_a_message_not_a_traceback(app_workspace):
    studies, _, token = _at_step(app_workspace, DESIGN, "condition")
    at = _participant(app_workspace, token)
    no_exceptions(at)
    wb_id = next(iter(studies.participant(token).progress["workbenches"].values()))
    studies.store.delete_workbench(wb_id)
    again = _participant(app_workspace, token)  # the refresh that raised KeyError before
    no_exceptions(again)
    assert "no longer on the server" in _texts(again) and "reset your link in Study admin" in _texts(again)
