"""core.study.results: tables, paired tests and the export zip of a study."""
from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest

from core.session.store import Store
from core.study.design import CONFIRM, SHOW, sus_score
from core.study.results import condition_means, export_zip, study_tables
from core.study.store import StudyStore

DESIGN = {"task": "attention", "conditions": [{"name": "click"}, {"name": "polygon"}]}


def run_participant(studies, token, seconds: dict[str, list[float]], sus: dict[str, list[int]], t0: float):
    """Annotate images in the participant's order, taking the given seconds per image."""
    p = studies.participant(token)
    t = t0
    for condition in p.conditions:
        for i, s in enumerate(seconds[condition]):
            studies.log(token, condition, SHOW, item=i, t=t)
            studies.log(token, condition, "click", item=i, payload={"x": 1, "y": 2}, t=t + s / 2)
            studies.log(token, condition, CONFIRM, item=i, payload={"clicks": [[1, 2]]}, t=t + s)
            t += s + 0.5
        studies.save_answers(token, condition, "sus", sus[condition], sus_score(sus[condition]))
    studies.set_progress(token, {"step": "done", "outcomes": {c: {"test_acc": 0.9 + 0.01 * k}
                                                             for k, c in enumerate(p.conditions)}})


@pytest.fixture
def finished_study(tmp_path):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, tokens = studies.create_study("click vs polygon", DESIGN, participants=3)
    for k, token in enumerate(tokens):  # clicks faster than polygons for everyone
        run_participant(studies, token, {"click": [4.0 + k, 6.0 + k], "polygon": [8.0 + k, 9.0 + 2 * k]},
                        {"click": [5, 1] * 5, "polygon": [3] * 10}, t0=1000.0 * (k + 1))
    return studies, study_id, tokens


def test_tables_hold_one_row_per_annotation_and_scores(finished_study):
    studies, study_id, tokens = finished_study
    tables = study_tables(studies, study_id)
    assert len(tables["annotations"]) == 3 * 4
    # participants are numbered from 1, as on the pages
    assert sorted({r["participant"] for r in tables["annotations"]}) == [1, 2, 3]
    first = [r for r in tables["annotations"] if r["participant"] == 1 and r["condition"] == "click"]
    assert [r["seconds"] for r in first] == [4.0, 6.0] and all(r["gestures"] == 1 for r in first)
    assert json.loads(first[0]["annotation"]) == {"clicks": [[1, 2]]}
    second = [r for r in tables["annotations"] if r["participant"] == 2]
    assert {r["condition"]: r["position"] for r in second} == {"polygon": 1, "click": 2}  # its own order
    # rows in the order shown (polygon first for participant 2), not by item id
    assert [(r["condition"], r["shown_order"]) for r in second] == [("polygon", 1), ("polygon", 2), ("click", 1), ("click", 2)]
    summary = {(r["participant"], r["condition"]): r for r in tables["summary"]}
    assert summary[(1, "click")]["median_seconds"] == 5.0 and summary[(3, "polygon")]["median_seconds"] == 11.5
    assert summary[(1, "click")]["sus"] == 100.0 and summary[(1, "polygon")]["sus"] == 50.0
    assert summary[(1, "click")]["gestures_per_image"] == 1.0 and "operations_per_image" not in summary[(1, "click")]
    assert {q["participant"] for q in tables["questionnaires"]} == {1, 2, 3}
    assert condition_means(tables["summary"], "sus") == {"click": 100.0, "polygon": 50.0}
    seconds = next(t for t in tables["tests"] if t["measure"] == "median_seconds")
    assert (seconds["condition_a"], seconds["condition_b"], seconds["n"]) == ("click", "polygon", 3)
    assert seconds["mean_diff"] < 0 and seconds["rank_biserial"] == pytest.approx(-1.0)
    assert not any(t["measure"] == "tlx" for t in tables["tests"])  # nobody answered it: no test
    assert all(tokens[0] not in json.dumps(rows) for rows in tables.values())  # tokens never leave


def test_export_zip_has_every_table_and_the_design(finished_study):
    studies, study_id, tokens = finished_study
    zf = zipfile.ZipFile(io.BytesIO(export_zip(studies, study_id)))
    assert set(zf.namelist()) == {"events.csv", "annotations.csv", "questionnaires.csv", "summary.csv", "tests.csv",
                                  "manifest.json"}
    rows = list(csv.DictReader(io.StringIO(zf.read("annotations.csv").decode())))
    assert len(rows) == 12 and {"seconds", "condition", "participant"} <= set(rows[0])
    sus = [r for r in csv.DictReader(io.StringIO(zf.read("questionnaires.csv").decode())) if r["instrument"] == "sus"]
    assert sorted(float(r["score"]) for r in sus) == [50.0] * 3 + [100.0] * 3
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["design"] == DESIGN and [p["order"] for p in manifest["participants"]][:2] == \
        [["click", "polygon"], ["polygon", "click"]]
    assert not any(t in zf.read(n).decode() for n in zf.namelist() for t in tokens)
    assert [p["number"] for p in manifest["participants"]] == [1, 2, 3]
    assert {"gestures", "marks", "test_acc_pct", "conflicting_acc_pct"} <= set(manifest["columns"])
    summary = list(csv.DictReader(io.StringIO(zf.read("summary.csv").decode())))
    assert {"test_acc_pct", "conflicting_acc_pct", "gestures_per_image"} <= set(summary[0])
    assert not {"test_acc", "conflicting_acc", "operations_per_image"} & set(summary[0])  # one name per meaning


def test_marks_and_gestures_are_two_columns(tmp_path):
    """A confirm payload's "operations" (the clicks it keeps) is the ``marks`` column; the
    events logged on the item (here a click, an undo and a click) are ``gestures``."""
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, (token, _) = studies.create_study("m", DESIGN, participants=2)
    condition = studies.participant(token).conditions[0]
    for t, kind in enumerate([SHOW, "click", "undo", "click"]):
        studies.log(token, condition, kind, item=7, t=10.0 + t)
    studies.log(token, condition, CONFIRM, item=7, payload={"mode": "click", "operations": 1}, t=20.0)
    (row,) = study_tables(studies, study_id)["annotations"]
    assert (row["gestures"], row["marks"], row["undos"]) == (3, 1, 1)
    assert json.loads(row["annotation"]) == {"mode": "click", "marks": 1}


def test_an_empty_study_exports_headers_only(tmp_path):
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, _ = studies.create_study("empty", DESIGN, participants=2)
    tables = study_tables(studies, study_id)
    assert tables["annotations"] == [] and tables["tests"] == [] and len(tables["summary"]) == 4
    zf = zipfile.ZipFile(io.BytesIO(export_zip(studies, study_id)))
    assert json.loads(zf.read("manifest.json"))["files"]["annotations.csv"] == 0


def test_annotations_come_by_participant_number_whatever_their_tokens(tmp_path, monkeypatch):
    """Rows per participant in their numbers' order: participant 2's token sorting before
    participant 1's does not put their annotations first (the browser study saw it)."""
    from core.study import store as study_store

    tokens = iter(["zzzz-first-made", "aaaa-made-second"])
    monkeypatch.setattr(study_store.secrets, "token_urlsafe", lambda n: next(tokens))
    studies = StudyStore(Store(tmp_path / "ws"))
    study_id, made = studies.create_study("order", DESIGN, participants=2)
    for k, token in enumerate(made):
        condition = studies.participant(token).conditions[0]
        studies.log(token, condition, SHOW, item=k, t=10.0 + k)
        studies.log(token, condition, CONFIRM, item=k, t=20.0 + k)
    tables = study_tables(studies, study_id)
    assert [r["participant"] for r in tables["annotations"]] == [1, 2]
