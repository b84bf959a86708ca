"""Retrain on a selection through the selection feedback kind (core.feedback.selection.workflow):
the pending report is on disk before the job runs, the report is filled in after, and a run
that makes no version drops it. Tiny generated data: seconds."""
from __future__ import annotations

import dataclasses

import pytest
from support import predict_ids

from core.feedback.selection.loss import KIND, RETRAIN, RetrainSettings
from core.feedback.selection.workflow import REPORT_KEY, SelectionError, retrain_report, start_retrain
from core.models import build_model
from core.session.jobs import JobBusy
from core.session.store import Store
from core.session.workbench import Workbench
from core.session.runs import JobOptions
from core.engine import TrainConfig

SMALL = RetrainSettings(iterations=6, selected_per_batch=4, train=dataclasses.replace(RETRAIN, batch_size=8, lr=0.01))


@pytest.fixture
def wb(workspace, tiny_data):
    return Workbench.create(Store(workspace), tiny_data, "tiny", build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0))


def test_retrain_records_the_selection_and_reports_after(wb):
    selected = [int(i) for i in wb.data.ids("pool")[:5]]
    job = start_retrain(wb, selected, SMALL)
    pending = wb.get_state(REPORT_KEY)
    assert pending["ids"] == selected and pending["version_before"] == 0 and pending["report"] is None
    assert pending["labels"] == [int(wb.data.labels[i]) for i in selected] and len(pending["preds_before"]) == 5
    assert job.kind == "retrain" and job.total_steps == SMALL.iterations
    assert job.wait(60) and job.status == "done", job.error
    record = wb.version(1)
    assert record.feedback["kind"] == KIND and record.feedback["ids"] == selected
    assert record.feedback["settings"]["iterations"] == SMALL.iterations and record.feedback["counterexamples"] is None
    assert record.description == f"retrain on selection: 5 examples, {SMALL.iterations} iterations"
    assert set(job.context["terms"]) == {KIND}
    report = retrain_report(wb, job)["report"]
    right_now = int((predict_ids(wb.model, wb.data, selected) == wb.data.labels[selected].numpy()).sum())
    assert report["version"] == 1 and report["n"] == 5 and report["right_after"] == right_now
    assert report["val_before"] == wb.version(0).metrics["val_acc"] and report["val_after"] == record.metrics["val_acc"]
    assert wb.get_state(REPORT_KEY)["report"] == report  # on disk: every tab shows the same report
    assert retrain_report(wb, job)["report"] == report  # computed once


def test_a_bad_selection_writes_nothing(wb):
    for bad in ([], [10_000]):
        with pytest.raises(SelectionError):
            start_retrain(wb, bad, SMALL)
    assert wb.get_state(REPORT_KEY) is None and wb.jobs.current is None


def test_a_busy_workbench_keeps_the_previous_report(wb):
    wb.put_state(REPORT_KEY, {"ids": [1], "report": {"n": 1}})
    running = wb.train(TrainConfig(epochs=500, batch_size=8), JobOptions("long"))
    with pytest.raises(JobBusy):
        start_retrain(wb, [int(i) for i in wb.data.ids("pool")[:3]], SMALL)
    assert wb.get_state(REPORT_KEY) == {"ids": [1], "report": {"n": 1}}
    running.stop()
    assert running.wait(60)


def test_a_run_without_a_version_drops_the_pending_report(wb):
    job = start_retrain(wb, [int(i) for i in wb.data.ids("pool")[:3]], RetrainSettings(
        iterations=500, selected_per_batch=4, train=dataclasses.replace(RETRAIN, batch_size=8)))
    job.stop()
    assert job.wait(60) and job.result is None
    assert retrain_report(wb, job) is None and wb.get_state(REPORT_KEY) is None
    assert retrain_report(wb, None) is None and wb.current_version == 0
