"""Retrain on a selection (seed 003, the Training monitor's embedding): start the retrain
through the selection feedback kind with its report pending on disk, and fill the report in
(the selected examples' predictions before and after, validation accuracy) once the job made
a version. The page only draws the settings and the report."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core.engine import predict
from core.feedback.selection.loss import (
    FEEDBACK as SELECTION,
    RetrainSettings,
    Selected,
    plan_retrain,
    retrain_config,
    selection_report,
)
from core.session.jobs import Job
from core.session.runs import FineTune, JobOptions
from core.session.workbench import Workbench

REPORT_KEY = "monitor.retrain"  # page state: the pending (then finished) report of the last retrain
JOB_KIND = "retrain"


class SelectionError(ValueError):
    """The selection cannot be retrained on (empty, unknown ids, no training examples)."""


def start_retrain(wb: Workbench, selected: Sequence[int], settings: RetrainSettings) -> Job:
    """Retrain a copy of the current model on the examples ``selected`` in the background.
    The pending report (ids, labels, predictions before, the version and its validation
    accuracy) is on disk before the job starts; :class:`SelectionError` when the selection
    cannot be retrained on; any error starting the job puts the previous report back."""
    selected = [int(i) for i in selected]
    try:
        plan_retrain(wb.data, selected, settings)  # the page's checks, before anything is written
    except ValueError as exc:
        raise SelectionError(str(exc)) from exc
    data = wb.data
    before = predict(wb.model, data.images[torch.as_tensor(selected)])[0].argmax(1).numpy()
    pending = {"ids": selected, "labels": [int(data.labels[i]) for i in selected], "preds_before": before.tolist(),
               "version_before": wb.current_version, "val_before": wb.version(wb.current_version).metrics.get("val_acc"),
               "settings": dataclasses.asdict(settings), "report": None}
    previous = wb.get_state(REPORT_KEY)
    wb.put_state(REPORT_KEY, pending)
    annotations = [Selected(i, int(data.labels[i])) for i in selected]
    try:
        return wb.start_training(SELECTION, annotations, FineTune(retrain_config(settings), settings),
                                 JobOptions(kind=JOB_KIND))
    except Exception:
        wb.put_state(REPORT_KEY, previous)
        raise


def retrain_report(wb: Workbench, job: Job | None) -> dict[str, Any] | None:
    """The last retrain's record (:data:`REPORT_KEY`), its ``report`` filled in once ``job``
    made a version (:func:`core.feedback.selection.loss.selection_report` plus ``version``,
    ``val_before`` and ``val_after``); None when there is none, or when the job ended without
    a version (stopped, failed, diverged: the pending record is dropped)."""
    pending = wb.get_state(REPORT_KEY)
    if not pending:
        return None
    ended = job is not None and not job.running and job.kind == JOB_KIND
    if pending.get("report") is None and ended and job.result is None:
        wb.put_state(REPORT_KEY, None)
        return None
    if pending.get("report") is None and ended and wb.current_version != pending["version_before"]:
        after = predict(wb.model, wb.data.images[torch.as_tensor(pending["ids"])])[0].argmax(1).numpy()
        report = selection_report(np.array(pending["labels"]), np.array(pending["preds_before"]), after)
        report.update(version=wb.current_version, val_before=pending["val_before"],
                      val_after=wb.version(wb.current_version).metrics.get("val_acc"))
        pending["report"] = report
        wb.put_state(REPORT_KEY, pending)
    return pending
