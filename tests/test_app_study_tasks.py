"""AppTest of latent and grid study conditions: the admin form offers them, and a participant
goes through each (gestures logged, items confirmed, the fine-tune's outcome recorded)."""
from __future__ import annotations

import time

import pytest
from apptest_helpers import ROOT, app_workspace, new_app, no_exceptions  # noqa: F401  (fixture)
from test_app_study import _participant, _texts, ss_key

pytestmark = pytest.mark.slow  # every test here takes over ~1.5 s: out of the fast lane

ADMIN = str(ROOT / "pages" / "study_admin.py")
DESIGN = {"task": "latent", "dataset": "digits", "arch": "seed-cnn",
          "conditions": [{"name": "lasso", "task": "latent", "settings": {"gesture": "lasso", "epochs": 1}, "budget": 2},
                         {"name": "marks", "task": "grid", "settings": {"marks": True, "epochs": 1}, "budget": 2}],
          "questionnaires": {"after_each": ["sus"], "final": []}}


def _at_condition(app_workspace, name: str, design=DESIGN):
    new_app(app_workspace).run()
    from app.state import get_store
    from core.study.flow import ParticipantFlow, Step
    from core.study.store import StudyStore

    studies = StudyStore(get_store())
    study_id, (token,) = studies.create_study(f"tasks {time.time()}", design, participants=1)
    flow = ParticipantFlow(studies, token)
    studies.set_progress(token, {"step": flow.steps.index(Step("condition", name))})
    return studies, study_id, token


def _flow(studies, token):
    from core.study.flow import ParticipantFlow

    return ParticipantFlow(studies, token)


def _wait_for_questionnaire(at) -> None:
    deadline = time.time() + 90
    while "Questionnaire" not in _texts(at) and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    no_exceptions(at)
    assert "Questionnaire" in _texts(at), _texts(at)


def test_admin_creates_a_study_of_a_latent_and_a_grid_condition(app_workspace, monkeypatch):
    monkeypatch.setenv("STEERBOARD_ADMIN_PASSWORD", "s3cret")
    at = new_app(app_workspace).run()
    at.switch_page(ADMIN).run()
    at.text_input(key="study-password").input("s3cret")
    at.button[0].click().run()
    at.selectbox(key="sa-c0-task").set_value("latent").run()
    at.selectbox(key="sa-c1-task").set_value("grid").run()
    no_exceptions(at)
    assert at.text_input(key="sa-c0-lat-name").value == "lasso" and at.text_input(key="sa-c1-grid-name").value == "marks"
    at.text_input(key="sa-name").input("latent vs grid")
    at.selectbox(key="sa-data").set_value("digits")
    at.selectbox(key="sa-c0-lat-gesture").set_value("drag")
    at.text_input(key="sa-c0-lat-name").input("drag")
    at.number_input(key="sa-c0-lat-budget").set_value(3)
    at.selectbox(key="sa-c1-grid-marks").set_value("no marks")
    at.text_input(key="sa-c1-grid-name").input("no marks")
    at.checkbox(key="sa-c1-grid-cex").check()
    at.button(key="FormSubmitter:study-new-Create study").click().run()
    no_exceptions(at)
    assert "Created study 'latent vs grid'" in _texts(at), _texts(at)
    from app.state import get_store
    from core.study.store import StudyStore

    study = next(s for s in StudyStore(get_store()).studies() if s["name"] == "latent vs grid")
    c0, c1 = study["design"]["conditions"]
    assert (c0["name"], c0["task"], c0["settings"]["gesture"], c0["budget"]) == ("drag", "latent", "drag", 3)
    assert (c1["name"], c1["task"], c1["settings"]["marks"], c1["settings"]["counterexamples"]) == (
        "no marks", "grid", False, True)
    assert "mode" not in c0["settings"] and "sampler" in c1["settings"]
    assert [i["options"] for i in study["design"]["likert_items"] if i["kind"] == "choice"] == [["drag", "no marks"]]


def test_a_participant_reviews_a_grid_condition_and_its_outcome_is_recorded(app_workspace):
    studies, study_id, token = _at_condition(app_workspace, "marks")
    at = _participant(app_workspace, token)
    no_exceptions(at)
    assert "image 1 of 2" in _texts(at) and "Click the grid squares" in _texts(at), _texts(at)
    from app.state import get_registry
    from core.study.grid import GridCondition

    flow = _flow(studies, token)
    cond = GridCondition(flow, get_registry().get(flow.progress["workbenches"]["marks"]))
    ids = cond.round()["ids"]
    first = ids[0]
    # two clicks in one request (the second during the first's rerun): both are applied and logged
    queued = {"kind": "click", "x": 0.5, "y": 0.5, "button": 0, "n": 1}
    at.session_state[ss_key(flow, "grid", first)] = {"click": {"x": 7.5, "y": 7.5, "button": 0, "n": 2,
                                                               "queue": [queued]}}
    at.run()
    no_exceptions(at)
    from core.feedback.grid.loss import square_of

    n, shape = cond.round()["n"], tuple(cond.wb.data.image_shape[1:])
    assert cond.squares(first) == sorted({square_of(0.5, 0.5, shape, n), square_of(7.5, 7.5, shape, n)})
    assert "2 of" in _texts(at)
    at.button(key="study-confirm").click().run()
    no_exceptions(at)
    assert "image 2 of 2" in _texts(at)
    at.button(key="study-confirm").click().run()  # no marks on the second: an answer too
    no_exceptions(at)
    assert "This part is done" in _texts(at)
    at.button(key="study-finish").click().run()
    _wait_for_questionnaire(at)
    from core.study.results import study_tables

    tables = study_tables(studies, study_id)
    rows = tables["annotations"]
    assert [(r["item"], r["gestures"], r["marks"]) for r in rows] == [(str(first), 2, 2), (str(ids[1]), 0, 0)]
    summary = next(r for r in tables["summary"] if r["condition"] == "marks")
    assert summary["images"] == 2 and summary["test_acc_pct"] is not None
    done = next(e for e in studies.events(study_id) if e.kind == "condition_done")
    assert done.payload["version"] == 1


def test_a_participant_moves_points_in_a_latent_condition_and_fine_tunes(app_workspace):
    studies, study_id, token = _at_condition(app_workspace, "lasso")
    at = _participant(app_workspace, token)
    no_exceptions(at)
    assert "move 1 of 2" in _texts(at) and "Draw a lasso around" in _texts(at), _texts(at)
    assert at.button(key="study-lat-done").disabled  # nothing moved yet
    from app.state import get_registry
    from core.study.latent import LatentCondition

    flow = _flow(studies, token)
    cond = LatentCondition(flow, get_registry().get(flow.progress["workbenches"]["lasso"]))
    items = cond.wb.get_state("study.latent.items")
    picked = items["shown"][:3]
    # a lasso selection, as the chart reports it
    at.session_state[ss_key(flow, "lat-chart", 0)] = {"selection": {
        "points": [{"customdata": [e], "curve_number": 0, "point_index": k} for k, e in enumerate(picked)],
        "point_indices": [0, 1, 2], "box": [], "lasso": [{"x": [0, 1, 1], "y": [0, 0, 1]}]}}
    at.run()
    no_exceptions(at)
    assert "3 selected" in _texts(at), _texts(at)
    at.selectbox(key=ss_key(flow, "lat-class", 0)).set_value("3")
    at.button(key="study-lat-move").click().run()
    no_exceptions(at)
    assert "1 of 2 moves made" in _texts(at) and "move 2 of 2" in _texts(at), _texts(at)
    assert sorted(cond.moves().moves) == sorted(picked)
    at.button(key="study-lat-done").click().run()  # done after one move: the model learns from it
    _wait_for_questionnaire(at)
    from core.study.results import study_tables

    tables = study_tables(studies, study_id)
    (row,) = tables["annotations"]
    assert (row["item"], row["gestures"], row["marks"], row["task"]) == ("move-1", 2, 3, "latent")
    events = studies.events(study_id)
    assert [e.kind for e in events if e.item == "move-1"] == ["item_shown", "select", "move", "confirm"]
    done = next(e for e in events if e.kind == "condition_done")
    assert done.payload["version"] == 1 and cond.wb.version(1).feedback["kind"] == "latent"
    summary = next(r for r in tables["summary"] if r["condition"] == "lasso")
    assert summary["images"] == 1 and summary["test_acc_pct"] is not None


def test_a_drag_condition_draws_its_canvas_and_a_bad_setting_gets_a_message(app_workspace):
    design = {**DESIGN, "conditions": [{"name": "drag", "task": "latent", "settings": {"gesture": "drag"}, "budget": 1},
                                       {"name": "odd", "task": "grid", "settings": {"sampler": "gmm"}, "budget": 1}]}
    studies, _, token = _at_condition(app_workspace, "drag", design)
    at = _participant(app_workspace, token)
    no_exceptions(at)
    assert "Turn on **Edit**" in _texts(at) and "0 of 1 moves made" in _texts(at)
    studies2, _, token2 = _at_condition(app_workspace, "odd", design)
    at = _participant(app_workspace, token2)
    no_exceptions(at)
    assert any("sampler must be one of entropy, margin, random" in e.value for e in at.error), _texts(at)


def test_a_latent_fine_tune_lost_at_a_restart_is_offered_again(app_workspace):
    """Done was pressed after one of two moves, and the server restarted during the fine-tune:
    the page says so and offers Continue (it showed the map again before)."""
    studies, study_id, token = _at_condition(app_workspace, "lasso")
    at = _participant(app_workspace, token)
    from app.state import get_registry
    from core.study.condition import FINE_TUNE_KEY
    from core.study.latent import LatentCondition

    flow = _flow(studies, token)
    wb = get_registry().get(flow.progress["workbenches"]["lasso"])
    cond = LatentCondition(flow, wb)
    view = cond.view(cond.branch())
    cond.move(view, cond.items(view)["shown"][:2], [(0.0, 0.0), (0.1, 0.1)])
    wb.put_state(FINE_TUNE_KEY, {"t": time.time()})  # started; its job is gone with the old server
    at.run()
    no_exceptions(at)
    assert "interrupted" in _texts(at) and at.button(key="study-finish"), _texts(at)
    at.button(key="study-finish").click().run()
    _wait_for_questionnaire(at)
    assert next(e for e in studies.events(study_id) if e.kind == "condition_done").payload["version"] == 1
