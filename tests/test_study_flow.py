"""core.study.flow: a participant's steps, progress that survives a restart, budgets and limits."""
from __future__ import annotations

import pytest

from core.session.store import Store
from core.study.design import likert_template
from core.study.flow import ParticipantFlow, Step, condition_outcome, new_design, normalize_design, steps_for
from core.study.store import StudyError, StudyStore

DESIGN = {
    "task": "attention",
    "conditions": [
        {"name": "click", "settings": {"mode": "click"}, "budget": 3},
        {"name": "polygon", "settings": {"mode": "polygon"}, "budget": 2, "time_limit_s": 60},
        {"name": "random", "settings": {"sampler": "random"}},
    ],
    "practice": True,
    "questionnaires": {"after_each": ["tlx"], "final": ["sus", "likert"]},
}


def _study(tmp_path, participants=2):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, tokens = studies.create_study("three conditions", DESIGN, participants=participants)
    return studies, study_id, tokens


def test_steps_follow_the_participants_order_with_questionnaires_between():
    order = ["polygon", "random", "click"]
    assert steps_for(DESIGN, order) == [
        Step("intro"), Step("practice", "polygon"),
        Step("condition", "polygon"), Step("questionnaire", "polygon", "tlx"),
        Step("condition", "random"), Step("questionnaire", "random", "tlx"),
        Step("condition", "click"), Step("questionnaire", "click", "tlx"),
        Step("questionnaire", None, "sus"), Step("questionnaire", None, "likert"), Step("done"),
    ]
    assert Step("questionnaire", None, "sus").answers_step == "final"


def test_defaults_are_filled_in_and_bad_designs_say_what_to_fix():
    d = normalize_design({"conditions": [{"name": " a "}, {"name": "b"}]})
    assert d["task"] == "attention" and [c["name"] for c in d["conditions"]] == ["a", "b"]
    assert d["conditions"][0]["budget"] == 16 and d["conditions"][0]["time_limit_s"] is None
    assert d["questionnaires"] == {"after_each": ["sus", "tlx"], "final": ["likert"]}
    assert [i["id"] for i in d["likert_items"]][:2] == ["Q1", "Q2"]
    two = [{"name": "a"}, {"name": "b"}]
    for bad, why in [
        ({"task": "painting", "conditions": two}, "task must be one of"),
        ({"conditions": [{"name": "a", "budget": 0}, {"name": "b"}]}, "budget must be a whole number"),
        ({"conditions": [{"name": "a", "budget": 2.5}, {"name": "b"}]}, "budget must be a whole number"),
        ({"conditions": [{"name": "a", "time_limit_s": -1}, {"name": "b"}]}, "time limit must be a positive"),
        ({"conditions": [{"name": "a", "settings": [1]}, {"name": "b"}]}, "settings must be a mapping"),
        ({"conditions": two, "questionnaires": {"after_each": ["sus", "sus"]}}, "at most once"),
        ({"conditions": two, "questionnaires": {"final": ["iq"]}}, "at most once"),
        ({"conditions": two, "likert_items": []}, "has no items"),
        ({"conditions": [{"name": "a"}]}, "2 to 4 conditions"),
    ]:
        with pytest.raises(StudyError, match=why):
            normalize_design(bad)


def test_new_design_from_the_form_fields_numbers_typed_items_or_takes_the_template():
    two = [{"name": "clicks", "task": "attention"}, {"name": "squares", "task": "grid"}]
    typed = new_design(task="attention", dataset="biased-digits", conditions=two, intro="Hi",
                       after_each=["sus"], final=["likert"], likert_texts="  It helped \n\nI trust it\n")
    assert typed["likert_items"] == [{"id": "Q1", "kind": "likert", "text": "It helped"},
                                     {"id": "Q2", "kind": "likert", "text": "I trust it"}]
    assert typed["questionnaires"] == {"after_each": ["sus"], "final": ["likert"]}
    assert typed["intro"] == "Hi" and typed["arch"] == "seed-cnn" and typed["dataset"] == "biased-digits"
    assert [c["task"] for c in typed["conditions"]] == ["attention", "grid"]
    blank = new_design(task="attention", dataset="biased-digits", conditions=two, final=["likert"])
    assert blank["likert_items"] == normalize_design({"conditions": two, "likert_items":
                                                      likert_template(two)})["likert_items"]
    with pytest.raises(StudyError, match="2 to 4 conditions"):
        new_design(task="attention", dataset="biased-digits", conditions=two[:1])


def test_progress_label_budget_and_resume_after_a_restart(tmp_path):
    studies, _, tokens = _study(tmp_path)
    flow = ParticipantFlow(studies, tokens[1])
    order = flow.participant.conditions
    assert order != ParticipantFlow(studies, tokens[0]).participant.conditions  # counterbalanced
    assert flow.step == Step("intro") and flow.label() == "introduction"
    assert flow.advance(expected=0) == Step("practice", order[0])
    assert flow.label() == "practice round, image 1 of 2"
    made = []
    wb = flow.start_condition(lambda: made.append(1) or "wb-practice", now=100.0)
    assert wb == "wb-practice" and flow.start_condition(lambda: made.append(1) or "other") == "wb-practice"
    assert made == [1]  # a refresh resumes the same workbench
    flow.sync_items(flow.items_done + 1)
    flow.sync_items(flow.items_done + 1)
    assert flow.condition_finished()
    step = flow.advance(expected=1)
    assert step == Step("condition", order[0])
    flow.start_condition(lambda: "wb-first", now=1000.0)
    flow.sync_items(flow.items_done + 1)
    n = 3 if order[0] == "click" else (2 if order[0] == "polygon" else 16)
    unit_label = f"condition 1 of 3, image 2 of {n}"
    assert flow.label() == unit_label

    again = ParticipantFlow(StudyStore(Store(tmp_path / "ws")), tokens[1])  # a server restart
    assert again.step == step and again.items_done == 1 and again.label() == unit_label
    assert again.start_condition(lambda: "must-not-be-made") == "wb-first"
    assert again.progress["workbenches"] == {"practice": "wb-practice", order[0]: "wb-first"}


def test_a_stale_tab_cannot_skip_a_step_and_items_need_a_condition(tmp_path):
    studies, _, tokens = _study(tmp_path)
    a, b = ParticipantFlow(studies, tokens[0]), ParticipantFlow(studies, tokens[0])
    a.advance(expected=0)
    assert b.advance(expected=0) == ParticipantFlow(studies, tokens[0]).step  # b showed step 0: ignored
    assert ParticipantFlow(studies, tokens[0]).index == 1
    intro_only = ParticipantFlow(studies, tokens[1])
    with pytest.raises(StudyError, match="no item to count"):
        intro_only.sync_items(1)
    with pytest.raises(StudyError, match="not a condition"):
        intro_only.start_condition(lambda: "x")
    for _ in range(30):  # advancing past the end stays on "done"
        intro_only.advance()
    assert intro_only.step == Step("done") and intro_only.label() == "finished, thank you"


def test_time_limit_ends_a_condition(tmp_path):
    studies, _, tokens = _study(tmp_path)
    flow = ParticipantFlow(studies, tokens[0])
    while flow.step != Step("condition", "polygon"):
        flow.advance()
    assert flow.time_left() == 60  # not started yet: the whole limit
    flow.start_condition(lambda: "wb", now=1000.0)
    assert flow.time_left(now=1030.0) == 30.0 and not flow.condition_finished(now=1030.0)
    assert flow.time_left(now=1100.0) == 0.0 and flow.condition_finished(now=1100.0)
    while flow.step.kind != "questionnaire" or flow.step.condition is not None:
        flow.advance()
    assert flow.label() == "questionnaire" and flow.time_left() is None and not flow.condition_finished()


def test_a_bad_token_is_refused(tmp_path):
    studies, _, _ = _study(tmp_path)
    with pytest.raises(StudyError, match="not valid"):
        ParticipantFlow(studies, "not-a-real-token-at-all")


def test_a_finished_condition_records_its_models_outcome_for_the_results(tmp_path, tiny_data):
    import dataclasses

    import numpy as np

    from core.models import build_model
    from core.study.results import study_tables

    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    plain = condition_outcome(model, tiny_data)
    assert plain["conflicting_acc"] is None and 0 <= plain["test_acc"] <= 100
    splits = {**tiny_data.splits, "test_aligned": tiny_data.splits["val"]}
    biased = condition_outcome(model, dataclasses.replace(tiny_data, splits=splits))
    assert biased["conflicting_acc"] == plain["test_acc"]
    n, m = len(tiny_data.ids("test")), len(tiny_data.ids("val"))
    val = 100 * float(np.mean(model.eval()(tiny_data.split("val")[0]).argmax(1).numpy() == tiny_data.split("val")[1].numpy()))
    assert abs(biased["test_acc"] - (plain["test_acc"] * n + val * m) / (n + m)) < 1e-6

    studies, study_id, tokens = _study(tmp_path)
    flow = ParticipantFlow(studies, tokens[0])
    with pytest.raises(StudyError, match="not a condition"):
        flow.finish_condition(biased)
    flow.advance()  # intro -> practice: its model is not a result
    flow.finish_condition({"test_acc": 1.0, "conflicting_acc": 2.0})
    first = flow.step.condition
    assert flow.finish_condition(biased, expected=flow.index).kind == "questionnaire"
    assert flow.progress["outcomes"] == {first: biased}
    row = next(r for r in study_tables(studies, study_id)["summary"] if r["participant"] == 1 and r["condition"] == first)
    assert row["test_acc_pct"] == biased["test_acc"] and row["conflicting_acc_pct"] == biased["conflicting_acc"]
