"""core.study.store: study tables in the workspace database (schema 2)."""
from __future__ import annotations

import sqlite3

import pytest

from core.session.store import SCHEMA_VERSION, Store
from core.study.design import CONFIRM, SHOW, per_item, sus_score
from core.study.store import StudyError, StudyStore

DESIGN = {"task": "attention", "conditions": [{"name": "click", "settings": {"mode": "click"}},
                                                {"name": "polygon", "settings": {"mode": "polygon"}}]}


def test_a_study_hands_out_tokens_and_counterbalanced_orders(tmp_path):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, tokens = studies.create_study("click vs polygon", DESIGN, participants=3)
    assert len(set(tokens)) == 3 and all(len(t) >= 20 for t in tokens)  # 16 random bytes each
    people = studies.participants(study_id)
    assert [p.number for p in people] == [0, 1, 2]
    assert [p.conditions for p in people] == [["click", "polygon"], ["polygon", "click"], ["click", "polygon"]]
    more = studies.add_participants(study_id, 1)
    assert studies.participant(more[0]).conditions == ["polygon", "click"] and studies.participant(more[0]).number == 3
    assert studies.study(study_id)["participants"] == 4


@pytest.mark.parametrize("design, why", [
    ({"conditions": [{"name": "only"}]}, "2 to 4 conditions"),
    ({"conditions": [{"name": c} for c in "abcde"]}, "2 to 4 conditions"),
    ({"conditions": [{"name": "a"}, {"name": "a"}]}, "must differ"),
    ({"conditions": [{"name": "a"}, {}]}, "needs a name"),
    ({}, "2 to 4 conditions"),
])
def test_bad_designs_are_refused_with_a_reason(tmp_path, design, why):
    studies = StudyStore(Store(tmp_path / "ws"))
    with pytest.raises(StudyError, match=why):
        studies.create_study("s", design)
    assert studies.studies() == []


def test_events_and_progress_survive_a_restart_and_give_per_image_times(tmp_path):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, (token,) = studies.create_study("s", DESIGN, participants=1)
    studies.log(token, "click", SHOW, item=7, t=100.0)
    studies.log(token, "click", "click", item=7, payload={"x": 3, "y": 4}, t=101.0)
    studies.log(token, "click", CONFIRM, item=7, t=103.5)
    studies.log(token, "", "page_view", payload={"page": "attention"}, t=99.0)
    studies.set_progress(token, {"step": 1, "condition": "click", "item": 2})

    restarted = StudyStore(Store(tmp_path / "ws"))  # a new server process on the same workspace
    assert restarted.participant(token).progress == {"step": 1, "condition": "click", "item": 2}
    events = restarted.events(study_id)
    assert [e.kind for e in events] == [SHOW, "click", CONFIRM, "page_view"]
    assert events[1].payload == {"x": 3, "y": 4} and events[1].item == "7"
    (row,) = per_item(events)
    assert row["seconds"] == pytest.approx(3.5) and row["operations"] == 1 and row["condition"] == "click"


def test_tokens_are_checked_and_give_one_participant_only(tmp_path):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, (a, b) = studies.create_study("s", DESIGN, participants=2)
    for bad in ("", "x", a[:-1] + ("A" if a[-1] != "A" else "B"), "' OR 1=1 --", "a" * 200):
        with pytest.raises(StudyError, match="not valid"):
            studies.participant(bad)
        with pytest.raises(StudyError):
            studies.log(bad, "click", "click")
    with pytest.raises(StudyError, match="not in this participant's study"):
        studies.log(a, "lasso", "click")
    studies.log(a, "click", "click", item=1)
    assert studies.events(study_id, b) == [] and len(studies.events(study_id, a)) == 1


def test_answers_are_kept_per_step_and_replaced_on_resubmit(tmp_path):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, (token,) = studies.create_study("s", DESIGN, participants=1)
    studies.save_answers(token, "click", "sus", [3] * 10, sus_score([3] * 10))
    studies.save_answers(token, "click", "sus", [5, 1] * 5, sus_score([5, 1] * 5))
    studies.save_answers(token, "final", "likert", {"Q1": 2, "Q8": "click"})
    rows = studies.answers(study_id)
    assert [(r["step"], r["instrument"], r["score"]) for r in rows] == [("click", "sus", 100.0), ("final", "likert", None)]
    with pytest.raises(StudyError, match="neither"):
        studies.save_answers(token, "lasso", "sus", [3] * 10)


def test_the_revision_changes_with_everything_the_results_read_and_only_then(tmp_path):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, (a, b) = studies.create_study("s", DESIGN, participants=2)
    other_id, (c,) = studies.create_study("other", DESIGN, participants=1)
    seen = [studies.revision(study_id)]
    assert studies.revision(study_id) == seen[-1]  # nothing changed
    studies.log(c, "click", SHOW, "1", t=1.0)  # another study's event
    assert studies.revision(study_id) == seen[-1]
    for change in (lambda: studies.log(a, "click", SHOW, "1", t=1.0),
                   lambda: studies.save_answers(b, "click", "sus", [3] * 10, 50.0),
                   lambda: studies.save_answers(b, "click", "sus", [4] * 10, 50.0),  # replaced: same count
                   lambda: studies.set_progress(a, {"step": 1}),
                   lambda: studies.add_participants(study_id, 1)):
        change()
        assert studies.revision(study_id) not in seen
        seen.append(studies.revision(study_id))


def test_a_schema_1_workspace_gets_the_study_tables(tmp_path):
    store = Store(tmp_path / "ws")
    with sqlite3.connect(store.db_path) as db:  # as the previous release left it
        for table in ("study_answers", "study_events", "participants", "studies"):
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 1")
    reopened = Store(tmp_path / "ws")
    assert reopened.schema_version() == SCHEMA_VERSION == 2
    study_id, _ = StudyStore(reopened).create_study("s", DESIGN, participants=2)
    assert len(StudyStore(reopened).participants(study_id)) == 2


def _study_workbench(store, marked: bool = True) -> str:
    """A workbench row as the participant page makes one (marked ``study_participant``)."""
    return store.create_workbench("digits", "seed-cnn", {"study_participant": True} if marked else {}).id


def test_study_workbenches_are_known_by_their_mark_or_a_participants_progress(tmp_path):
    store = Store(tmp_path / "ws")
    studies = StudyStore(store)
    study_id, (token,) = studies.create_study("s", DESIGN, participants=1)
    marked, recorded, plain = _study_workbench(store), _study_workbench(store, False), _study_workbench(store, False)
    studies.set_progress(token, {"step": 1, "workbenches": {"click": recorded}})
    assert studies.study_workbench_ids() == {marked, recorded}
    assert marked in studies.study_workbench_ids() and plain not in studies.study_workbench_ids()


def test_a_missing_condition_workbench_is_reported_by_slot(tmp_path):
    store = Store(tmp_path / "ws")
    studies = StudyStore(store)
    _, (token,) = studies.create_study("s", DESIGN, participants=1)
    kept, gone = _study_workbench(store), _study_workbench(store)
    studies.set_progress(token, {"step": 2, "workbenches": {"click": kept, "polygon": gone}})
    assert studies.missing_workbenches(token) == {}
    store.delete_workbench(gone, files=True)
    assert studies.missing_workbenches(token) == {"polygon": gone}


def test_reset_starts_a_participant_again_and_deletes_their_workbenches(tmp_path):
    store = Store(tmp_path / "ws")
    studies = StudyStore(store)
    study_id, (token, other) = studies.create_study("s", DESIGN, participants=2)
    wb, busy = _study_workbench(store), _study_workbench(store)
    studies.set_progress(token, {"step": 3, "items_done": 1, "workbenches": {"click": wb, "polygon": busy}})
    studies.log(token, "click", CONFIRM, "7")
    studies.log(other, "click", CONFIRM, "8")
    studies.save_answers(token, "click", "sus", [3] * 10, 50.0)
    deleted = []

    def delete(wb_id):
        if wb_id == busy:
            raise ValueError("training")
        deleted.append(wb_id)
        store.delete_workbench(wb_id, files=True)

    assert studies.reset_participant(token, delete) == [busy]
    assert deleted == [wb]
    assert studies.participant(token).progress == {"retired_workbenches": [busy]}  # step 0, busy one still hidden
    assert busy in studies.study_workbench_ids()
    assert [e.participant for e in studies.events(study_id)] == [other] and studies.answers(study_id) == []


def test_replace_gives_the_place_a_new_token_and_revokes_the_old(tmp_path):
    store = Store(tmp_path / "ws")
    studies = StudyStore(store)
    study_id, (first, token) = studies.create_study("s", DESIGN, participants=2)
    wb = _study_workbench(store)
    studies.set_progress(token, {"step": 2, "workbenches": {"polygon": wb}})
    studies.log(token, "polygon", CONFIRM, "7")
    new, kept = studies.replace_participant(token, lambda i: store.delete_workbench(i, files=True))
    assert kept == [] and new != token and store.get_workbench(wb) is None
    with pytest.raises(StudyError, match="not valid"):
        studies.participant(token)
    p = studies.participant(new)
    assert (p.number, p.conditions, p.progress) == (1, ["polygon", "click"], {})
    assert [x.token for x in studies.participants(study_id)] == [first, new] and studies.events(study_id) == []
