"""core.study.attention: one participant's attention condition, from its images to its outcome."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from core.feedback.attention import workflow as aw
from core.models import build_model
from core.session.store import Store
from core.study.design import CONFIRM, SHOW
from core.study.attention import AttentionCondition, condition_settings
from core.study.flow import ParticipantFlow, Step
from core.study.results import export_zip, study_tables
from core.study.store import StudyError, StudyStore
from core.session.workbench import Workbench

DESIGN = {
    "task": "attention",
    "conditions": [
        {"name": "click", "settings": {"mode": "click", "sampler": "random", "epochs": 1}, "budget": 3},
        {"name": "polygon", "settings": {"mode": "polygon", "sampler": "entropy", "epochs": 1}, "budget": 2},
    ],
    "questionnaires": {"after_each": ["tlx"], "final": ["sus"]},
}


def _setup(tmp_path, tiny_data):
    store = Store(tmp_path / "ws")
    studies = StudyStore(store)
    study_id, tokens = studies.create_study("click vs polygon", DESIGN, participants=2)
    base = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)

    def fresh() -> str:
        return Workbench.create(store, tiny_data, "tiny", base).id

    return store, studies, study_id, tokens, fresh


def _open(store, wb_id, data):
    return Workbench.open(store, wb_id, loader=lambda source, seed=0: data)


def test_condition_settings_are_locked_from_the_design():
    s = condition_settings(DESIGN, "polygon")
    assert (s.mode, s.sampler, s.epochs, s.per_round) == ("polygon", "entropy", 1, 2)
    assert condition_settings({**DESIGN, "practice_budget": 4}, "click", practice=True).per_round == 4
    # counterexamples: off for a condition that does not say (studies made before the option), else as locked
    assert not condition_settings(DESIGN, "click").counterexamples
    on = {**DESIGN, "conditions": [{"name": "a", "settings": {"counterexamples": True, "cex_k": 2}}, {"name": "b"}]}
    assert (condition_settings(on, "a").counterexamples, condition_settings(on, "a").cex_k) == (True, 2)
    assert condition_settings(on, "a", practice=True).counterexamples  # the practice round fine-tunes alike
    with pytest.raises(StudyError, match="counterexamples must be true or false"):
        condition_settings({**DESIGN, "conditions": [{"name": "a", "settings": {"counterexamples": "yes"}},
                                                     {"name": "b"}]}, "a")
    bad = {**DESIGN, "conditions": [{"name": "a", "settings": {"device": "cuda"}}, {"name": "b"}]}
    with pytest.raises(StudyError, match="device cannot be set"):
        condition_settings(bad, "a")
    bad = {**DESIGN, "conditions": [{"name": "a", "settings": {"mode": "lasso"}}, {"name": "b"}]}
    with pytest.raises(StudyError, match="mode must be click or polygon"):
        condition_settings(bad, "a")


def test_a_participant_annotates_a_condition_and_its_outcome_reaches_the_results(tmp_path, tiny_data):
    store, studies, study_id, tokens, fresh = _setup(tmp_path, tiny_data)
    flow = ParticipantFlow(studies, tokens[0])
    flow.advance()  # intro
    assert flow.step == Step("condition", "click")
    with pytest.raises(StudyError, match="not a condition"):
        AttentionCondition(ParticipantFlow(studies, tokens[1]), None)  # still on the intro
    wb = _open(store, flow.start_condition(fresh), tiny_data)
    cond = AttentionCondition(flow, wb)
    ids = cond.round().ids
    assert len(ids) == 3 and set(ids) <= set(tiny_data.ids("pool").tolist())
    t = 1000.0
    for k, example_id in enumerate(ids):
        assert cond.current() == example_id
        assert cond.show(example_id, now=t) and not cond.show(example_id, now=t + 1)  # the first showing counts
        cond.gesture("click", example_id, {"x": 3, "y": 4}, now=t + 1)
        cond.gesture("undo", example_id, now=t + 2)
        ann = aw.annotate_like_a_person(wb.model, tiny_data, [example_id])[0]
        if k == 0:
            with pytest.raises(StudyError, match="annotates by click"):
                cond.confirm(aw.AttentionAnnotation(**{**ann.__dict__, "mode": "polygon"}), now=t + 5)
        stored = cond.confirm(ann, now=t + 5 + k)
        assert stored.seconds == pytest.approx(5 + k)
        assert flow.items_done == k + 1
        t += 100
    assert cond.current() is None and flow.condition_finished()
    with pytest.raises(StudyError, match="not one of this condition's images"):
        other = next(i for i in tiny_data.ids("pool").tolist() if i not in ids)
        cond.confirm(aw.annotate_like_a_person(wb.model, tiny_data, [other])[0])

    before = {k: v.clone() for k, v in wb.model.state_dict().items()}
    job = cond.start_fine_tune()
    assert job.wait(120) and job.status == "done", job.error
    assert wb.current_version == 1 and any(not v.equal(before[k]) for k, v in wb.model.state_dict().items())
    assert wb.version(1).feedback["counterexamples"] is None  # the design does not say: off, as before the option
    assert cond.finish(expected=flow.index) == Step("questionnaire", "click", "tlx")

    events = studies.events(study_id, tokens[0])
    assert [e.kind for e in events[:4]] == [SHOW, "click", "undo", CONFIRM]
    assert all(e.condition == "click" for e in events)
    tables = study_tables(studies, study_id)
    rows = [r for r in tables["annotations"] if r["participant"] == 1]
    assert sorted(r["seconds"] for r in rows) == [5.0, 6.0, 7.0] and {r["condition"] for r in rows} == {"click"}
    assert all(r["gestures"] == 2 for r in rows)  # click + undo, from the events
    summary = next(r for r in tables["summary"] if r["participant"] == 1 and r["condition"] == "click")
    assert summary["images"] == 3 and summary["test_acc_pct"] is not None

    # the export holds the condition's final model only when asked, byte for byte the fine-tuned version
    assert not any(n.startswith("models/") for n in zipfile.ZipFile(io.BytesIO(export_zip(studies, study_id))).namelist())
    zf = zipfile.ZipFile(io.BytesIO(export_zip(studies, study_id, models=True, tables=tables)))
    assert [n for n in zf.namelist() if n.startswith("models/")] == ["models/participant-1-click-v1.pt"]
    assert zf.read("models/participant-1-click-v1.pt") == Path(wb.version(1).checkpoint).read_bytes()
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["models"][0]["file"] == "models/participant-1-click-v1.pt" and manifest["models"][0]["version"] == 1
    assert manifest["fine_tune"] == {"click": {"task": "attention", "counterexamples": False, "cex_k": None},
                                     "polygon": {"task": "attention", "counterexamples": False, "cex_k": None}}


def test_a_condition_with_counterexamples_fine_tunes_with_them_and_exports_it(tmp_path, tiny_data):
    import numpy as np

    store = Store(tmp_path / "ws")
    studies = StudyStore(store)
    design = {**DESIGN, "conditions": [
        {"name": "click", "settings": {"mode": "click", "sampler": "random", "epochs": 1, "counterexamples": True,
                                       "cex_k": 2}, "budget": 1},
        {"name": "polygon", "settings": {"mode": "polygon", "epochs": 1, "counterexamples": False}, "budget": 1}]}
    study_id, tokens = studies.create_study("counterexamples", design, participants=1)
    base = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    flow = ParticipantFlow(studies, tokens[0])
    flow.advance()
    assert flow.step == Step("condition", "click")
    wb = _open(store, flow.start_condition(lambda: Workbench.create(store, tiny_data, "tiny", base).id), tiny_data)
    cond = AttentionCondition(flow, wb)
    (example,) = cond.round().ids
    neg = np.zeros((16, 16), bool)
    neg[:, :4] = True  # "ignore the left edge"
    cond.show(example, now=1.0)
    cond.confirm(aw.AttentionAnnotation.from_masks(example, int(tiny_data.labels[example]), positives=[(8.0, 8.0)],
                                                   negative=neg), now=2.0)
    job = cond.start_fine_tune()
    assert job.wait(120) and job.status == "done", job.error
    cex = wb.version(wb.current_version).feedback["counterexamples"]
    assert cex["enabled"] and cex["k"] == 2 and cex["made"] == 2
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(export_zip(studies, study_id))).read("manifest.json"))
    assert manifest["design"]["conditions"][0]["settings"]["counterexamples"] is True
    assert manifest["fine_tune"] == {"click": {"task": "attention", "counterexamples": True, "cex_k": 2},
                                     "polygon": {"task": "attention", "counterexamples": False, "cex_k": None}}


def test_a_restart_resumes_the_same_images_and_counts(tmp_path, tiny_data):
    store, studies, _, tokens, fresh = _setup(tmp_path, tiny_data)
    flow = ParticipantFlow(studies, tokens[1])  # order: polygon, click
    flow.advance()
    wb = _open(store, flow.start_condition(fresh), tiny_data)
    cond = AttentionCondition(flow, wb)
    ids = cond.round().ids
    first = aw.annotate_like_a_person(wb.model, tiny_data, [ids[0]])[0]
    polygon = aw.AttentionAnnotation(**{**first.__dict__, "mode": "polygon"})
    cond.show(ids[0], now=10.0)
    cond.confirm(polygon, now=12.0)

    store2 = Store(tmp_path / "ws")  # the server is restarted
    flow2 = ParticipantFlow(StudyStore(store2), tokens[1])
    wb2 = _open(store2, flow2.start_condition(lambda: "must-not-be-made"), tiny_data)
    again = AttentionCondition(flow2, wb2)
    assert again.round().ids == ids and again.current() == ids[1] and flow2.items_done == 1
    assert flow2.label() == "condition 1 of 2, image 2 of 2"
    flow2.sync_items(0)  # a kill between storing the annotation and counting it: the next confirm heals it
    again.show(ids[1], now=20.0)
    second = aw.annotate_like_a_person(wb2.model, tiny_data, [ids[1]])[0]
    again.confirm(aw.AttentionAnnotation(**{**second.__dict__, "mode": "polygon"}), now=21.0)
    assert flow2.items_done == 2 and flow2.condition_finished()


def test_nothing_annotated_cannot_be_fine_tuned(tmp_path, tiny_data):
    store, studies, _, tokens, fresh = _setup(tmp_path, tiny_data)
    flow = ParticipantFlow(studies, tokens[0])
    flow.advance()
    cond = AttentionCondition(flow, _open(store, flow.start_condition(fresh), tiny_data))
    with pytest.raises(StudyError, match="nothing was annotated"):
        cond.start_fine_tune()
    with pytest.raises(StudyError, match="not a gesture"):
        cond.gesture("sneeze", 1)
