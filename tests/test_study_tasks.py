"""core.study.grid and core.study.latent: one participant's grid and latent conditions of a
mixed study, from their items to their outcomes and the export."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from core.models import build_model
from core.session.store import Store
from core.study.design import CONFIRM, SHOW
from core.study.flow import ParticipantFlow, Step
from core.study.grid import ROUND_KEY, GridCondition
from core.study.grid import condition_settings as grid_settings
from core.feedback.latent.workflow import centroid_targets
from core.study.latent import LatentCondition
from core.study.latent import condition_settings as latent_settings
from core.study.results import export_zip, study_tables
from core.study.store import StudyError, StudyStore
from core.session.workbench import Workbench

DESIGN = {
    "task": "latent",
    "conditions": [
        {"name": "lasso", "task": "latent", "settings": {"gesture": "lasso", "epochs": 1}, "budget": 2},
        {"name": "marks", "task": "grid", "settings": {"marks": True, "epochs": 1, "counterexamples": True,
                                                        "cex_k": 2}, "budget": 3},
    ],
    "questionnaires": {"after_each": ["tlx"], "final": []},
}


def _setup(tmp_path, tiny_data, design=DESIGN, participants=2):
    store = Store(tmp_path / "ws")
    studies = StudyStore(store)
    study_id, tokens = studies.create_study("latent vs grid", design, participants=participants)
    base = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)

    def fresh() -> str:
        return Workbench.create(store, tiny_data, "tiny", base).id

    return store, studies, study_id, tokens, fresh


def _open(store, wb_id, data):
    return Workbench.open(store, wb_id, loader=lambda source, seed=0: data)


def _to(flow, condition):
    while flow.step != Step("condition", condition):
        flow.advance()


def test_settings_are_locked_per_task():
    assert grid_settings(DESIGN, "marks").marks and grid_settings(DESIGN, "marks").counterexamples().enabled
    assert grid_settings(DESIGN, "marks").page.epochs == 1
    assert latent_settings(DESIGN, "lasso").gesture == "lasso"
    no_marks = {**DESIGN, "conditions": [DESIGN["conditions"][0], {"name": "plain", "task": "grid",
                                                                    "settings": {"marks": False, "counterexamples": True}}]}
    assert not grid_settings(no_marks, "plain").counterexamples().enabled  # nothing marked: no counterexamples
    with pytest.raises(StudyError, match="is a grid condition, not latent"):
        latent_settings(DESIGN, "marks")
    bad = {**DESIGN, "conditions": [{"name": "a", "task": "latent", "settings": {"gesture": "wave"}},
                                    {"name": "b", "task": "grid", "settings": {"mode": "click"}}]}
    with pytest.raises(StudyError, match="gesture must be one of lasso, box, drag"):
        latent_settings(bad, "a")
    with pytest.raises(StudyError, match="mode cannot be set for a grid condition"):
        grid_settings(bad, "b")
    from core.study.flow import normalize_design

    with pytest.raises(StudyError, match="the task must be one of"):
        normalize_design({**DESIGN, "conditions": [{"name": "a", "task": "paint"}, {"name": "b"}]})


def test_a_grid_condition_logs_marks_keeps_its_images_and_records_its_outcome(tmp_path, tiny_data):
    store, studies, study_id, tokens, fresh = _setup(tmp_path, tiny_data)
    flow = ParticipantFlow(studies, tokens[0])  # order: lasso, marks
    _to(flow, "marks")
    assert flow.label() == "condition 2 of 2, image 1 of 3"
    with pytest.raises(StudyError, match="task is grid, not latent"):
        LatentCondition(flow, None)
    wb = _open(store, flow.start_condition(fresh), tiny_data)
    cond = GridCondition(flow, wb)
    ids = cond.round()["ids"]
    assert len(ids) == 3 and set(ids) <= set(tiny_data.ids("train").tolist())
    assert Store(tmp_path / "ws").get_state(wb.id, ROUND_KEY)["ids"] == ids  # on disk once chosen
    n = cond.round()["n"]
    t = 100.0
    for k, example_id in enumerate(ids):
        assert cond.current() == example_id
        assert cond.show(example_id, now=t) and not cond.show(example_id, now=t + 1)
        if k < 2:
            assert cond.toggle(example_id, 0, now=t + 1) == [0]
            assert cond.toggle(example_id, n * n - 1, now=t + 2) == [0, n * n - 1]
            assert cond.toggle(example_id, 0, now=t + 3) == [n * n - 1]  # a second click erases
            assert cond.undo(example_id, now=t + 4) and cond.squares(example_id) == [0, n * n - 1]
        ann = cond.confirm(example_id, now=t + 10 + k)
        assert ann.seconds == pytest.approx(10 + k) and flow.items_done == k + 1
        t += 100
    with pytest.raises(StudyError, match="not on the"):
        cond.toggle(ids[0], n * n)
    assert cond.current() is None and flow.condition_finished()
    assert [a.example_id for a in cond.annotations()] == ids[:2]  # the third had no marks: not a penalty image

    # a refresh or a restart shows the same images, marks and counts
    store2 = Store(tmp_path / "ws")
    flow2 = ParticipantFlow(StudyStore(store2), tokens[0])
    again = GridCondition(flow2, _open(store2, flow2.start_condition(lambda: "must-not-be-made"), tiny_data))
    assert again.round()["ids"] == ids and again.squares(ids[0]) == [0, n * n - 1] and flow2.items_done == 3

    before = {k: v.clone() for k, v in wb.model.state_dict().items()}
    job = cond.start_fine_tune()
    assert cond.fine_tune_started()
    assert job.wait(120) and job.status == "done", job.error
    assert wb.current_version == 1 and any(not v.equal(before[k]) for k, v in wb.model.state_dict().items())
    fb = wb.version(1).feedback
    assert fb["kind"] == "grid" and fb["example_ids"] == ids[:2] and fb["counterexamples"]["made"] == 4
    assert cond.finish(expected=flow.index) == Step("questionnaire", "marks", "tlx")

    events = [e for e in studies.events(study_id, tokens[0]) if e.item == str(ids[0])]
    assert [e.kind for e in events] == [SHOW, "mark", "mark", "erase", "undo", CONFIRM]
    assert json.loads(json.dumps(events[-1].payload))["squares"] == [0, n * n - 1]
    tables = study_tables(studies, study_id)
    rows = [r for r in tables["annotations"] if r["participant"] == 1]
    assert [r["item"] for r in rows] == [str(i) for i in ids]  # in the order shown
    assert [r["gestures"] for r in rows] == [4, 4, 0] and [r["marks"] for r in rows] == [2, 2, 0]
    assert {r["task"] for r in rows} == {"grid"}
    summary = next(r for r in tables["summary"] if r["participant"] == 1 and r["condition"] == "marks")
    assert summary["images"] == 3 and summary["task"] == "grid" and summary["test_acc_pct"] is not None
    done = next(e for e in studies.events(study_id, tokens[0]) if e.kind == "condition_done")
    assert done.payload["version"] == 1
    zf = zipfile.ZipFile(io.BytesIO(export_zip(studies, study_id, models=True, tables=tables)))
    assert "models/participant-1-marks-v1.pt" in zf.namelist()
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["fine_tune"]["marks"] == {"task": "grid", "marks": True, "penalty": True,
                                              "counterexamples": True, "cex_k": 2}
    assert manifest["fine_tune"]["lasso"] == {"task": "latent", "gesture": "lasso", "counterexamples": False,
                                              "cex_k": None}


def test_a_grid_condition_without_marks_fine_tunes_without_feedback(tmp_path, tiny_data):
    design = {**DESIGN, "conditions": [{"name": "marks", "task": "grid", "settings": {"epochs": 1}, "budget": 1},
                                       {"name": "no marks", "task": "grid", "settings": {"marks": False, "epochs": 1},
                                        "budget": 2}]}
    store, studies, study_id, tokens, fresh = _setup(tmp_path, tiny_data, design)
    flow = ParticipantFlow(studies, tokens[1])  # order: no marks, marks
    _to(flow, "no marks")
    cond = GridCondition(flow, _open(store, flow.start_condition(fresh), tiny_data))
    first = cond.current()
    with pytest.raises(StudyError, match="has no marks"):
        cond.toggle(first, 0)
    for example_id in list(cond.round()["ids"]):
        cond.show(example_id, now=1.0)
        cond.confirm(example_id, now=3.0)
    job = cond.start_fine_tune()
    assert job.wait(120) and job.status == "done", job.error
    fb = cond.wb.version(cond.wb.current_version).feedback
    assert fb["grid"]["study"] == {"reviewed": cond.round()["ids"], "marks": False} and "counterexamples" not in fb


def test_a_latent_condition_logs_moves_keeps_its_points_and_records_its_outcome(tmp_path, tiny_data):
    store, studies, study_id, tokens, fresh = _setup(tmp_path, tiny_data)
    flow = ParticipantFlow(studies, tokens[0])
    _to(flow, "lasso")
    assert flow.label() == "condition 1 of 2, move 1 of 2"
    wb = _open(store, flow.start_condition(fresh), tiny_data)
    cond = LatentCondition(flow, wb)
    with pytest.raises(StudyError, match="nothing to fine-tune"):
        cond.start_fine_tune(None, None)
    branch = cond.branch()
    view = cond.view(branch)
    items = cond.items(view)
    pool = [int(e) for e in view.ids]
    assert sorted(items["shown"]) == sorted(pool)  # the tiny pool: every point is shown
    wrong = {int(e) for e in view.ids[view.wrong]}
    assert set(items["draggable"][:len(wrong)]) == wrong  # mistakes first
    assert cond.show(now=10.0) and not cond.show(now=11.0)
    picked = pool[:3]
    cond.select(picked, "lasso", now=12.0)
    targets = centroid_targets(view, picked, 1)
    cond.move(view, picked, targets, now=15.0)
    assert flow.items_done == 1 and len(cond.moves()) == 3
    cond.select(pool[3:4], "lasso", now=16.0)
    cond.select(pool[3:5], "lasso", now=17.0)
    cond.move(view, pool[3:5], centroid_targets(view, pool[3:5], 2), now=22.0)
    assert flow.items_done == 2 and flow.condition_finished() and cond.current_item() is None
    with pytest.raises(StudyError, match="used up"):
        cond.move(view, pool[5:6], [(0.0, 0.0)])

    # a restart shows the same points and moves
    store2 = Store(tmp_path / "ws")
    flow2 = ParticipantFlow(StudyStore(store2), tokens[0])
    again = LatentCondition(flow2, _open(store2, flow2.start_condition(lambda: "must-not-be-made"), tiny_data))
    assert again.items(view) == cond.items(view) and len(again.moves()) == 5 and flow2.items_done == 2

    job = cond.start_fine_tune(branch, view)
    assert job.wait(120) and job.status == "done", job.error
    assert wb.current_version == 1 and wb.version(1).feedback["kind"] == "latent"
    assert cond.finish(expected=flow.index) == Step("questionnaire", "lasso", "tlx")

    events = studies.events(study_id, tokens[0])
    assert [(e.kind, e.item) for e in events if e.item] == [
        (SHOW, "move-1"), ("select", "move-1"), ("move", "move-1"), (CONFIRM, "move-1"),
        (SHOW, "move-2"), ("select", "move-2"), ("select", "move-2"), ("move", "move-2"), (CONFIRM, "move-2")]
    tables = study_tables(studies, study_id)
    rows = [r for r in tables["annotations"] if r["participant"] == 1]
    assert [(r["item"], r["seconds"], r["gestures"], r["marks"], r["task"]) for r in rows] == [
        ("move-1", 5.0, 2, 3, "latent"), ("move-2", 7.0, 3, 2, "latent")]
    summary = next(r for r in tables["summary"] if r["participant"] == 1 and r["condition"] == "lasso")
    assert summary["images"] == 2 and summary["median_seconds"] == 6.0 and summary["test_acc_pct"] is not None
    zf = zipfile.ZipFile(io.BytesIO(export_zip(studies, study_id, tables=tables)))
    csv_rows = list(csv.DictReader(io.StringIO(zf.read("summary.csv").decode())))
    assert [(r["participant"], r["condition"], r["task"]) for r in csv_rows] == [
        ("1", "lasso", "latent"), ("1", "marks", "grid"), ("2", "marks", "grid"), ("2", "lasso", "latent")]


def test_a_drag_condition_moves_only_its_draggable_points(tmp_path, tiny_data):
    design = {**DESIGN, "conditions": [{"name": "drag", "task": "latent", "settings": {"gesture": "drag",
                                                                                       "draggable": 2}, "budget": 3},
                                       DESIGN["conditions"][1]]}
    store, studies, _, tokens, fresh = _setup(tmp_path, tiny_data, design)
    flow = ParticipantFlow(studies, tokens[0])
    _to(flow, "drag")
    cond = LatentCondition(flow, _open(store, flow.start_condition(fresh), tiny_data))
    view = cond.view(cond.branch())
    items = cond.items(view)
    assert len(items["draggable"]) == 2
    other = next(e for e in items["shown"] if e not in items["draggable"])
    with pytest.raises(StudyError, match="cannot be moved"):
        cond.move(view, [other], [(0.0, 0.0)])
    cond.show(now=1.0)
    cond.move(view, items["draggable"][:1], [(0.5, 0.5)], now=4.0)
    assert flow.items_done == 1 and cond.moves().moves[items["draggable"][0]].target == (0.5, 0.5)


def test_a_practice_round_of_a_grid_condition_is_not_a_result(tmp_path, tiny_data):
    design = {**DESIGN, "practice": True, "practice_budget": 1,
              "conditions": [DESIGN["conditions"][1], DESIGN["conditions"][0]]}  # marks first
    store, studies, study_id, tokens, fresh = _setup(tmp_path, tiny_data, design)
    flow = ParticipantFlow(studies, tokens[0])
    flow.advance()
    assert flow.step == Step("practice", "marks") and flow.label() == "practice round, image 1 of 1"
    cond = GridCondition(flow, _open(store, flow.start_condition(fresh), tiny_data))
    (example,) = cond.round()["ids"]  # the practice budget, not the condition's
    cond.show(example, now=1.0)
    cond.toggle(example, 0, now=2.0)
    cond.confirm(example, now=3.0)
    assert flow.condition_finished()
    assert cond.finish(expected=flow.index) == Step("condition", "marks")
    events = studies.events(study_id, tokens[0])
    assert {e.condition for e in events if e.item} == {""} and all(e.payload.get("practice") for e in events if e.item)
    tables = study_tables(studies, study_id)
    # the practice item is listed without a condition (as attention's are); no summary row counts it
    assert [(r["condition"], r["position"]) for r in tables["annotations"]] == [("", None)]
    assert all(r["images"] == 0 for r in tables["summary"] if r["participant"] == 1)
    assert "outcomes" not in studies.participant(tokens[0]).progress
