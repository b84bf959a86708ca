"""An attention-clicking condition of a study (seed 001's user study) without any UI: the
condition's locked settings, its images (chosen once by its sampler and kept with the
workbench, so a refresh shows the same ones), the gesture events logged before the page
reacts, each confirmed annotation counted, and the fine-tune whose model is the condition's
outcome. The participant page draws :meth:`AttentionCondition.current` and turns clicks into
calls here; ``core.feedback.attention.workflow`` does the attention work itself.
"""
from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

from core.feedback.attention import workflow as aw
from core.feedback.attention.loss import AttentionAnnotation
from core.study.design import CONFIRM, OPERATIONS, SHOW
from core.study.flow import ParticipantFlow, condition_of, condition_outcome
from core.study.store import StudyError
from core.session.workbench import Workbench

#: settings a study may lock per condition (the rest of the Attention page's settings keep their defaults)
LOCKABLE = frozenset({"mode", "sampler", "per_page", "target", "epochs", "lr", "w_g", "w_c", "opacity",
                      "counterexamples", "cex_k", "rehearsal"})
#: a condition that does not say (every study made before the option existed) fine-tunes without
#: counterexamples, as those studies' participants did; the admin form sets it on each condition
COUNTEREXAMPLES_IF_MISSING = False
#: likewise lr and rehearsal: a condition made before the page's round fine-tune changed (lr 0.003
#: with 112 rehearsal images) fine-tunes as its participants so far did (the admin form sets both)
LR_IF_MISSING = aw.FINE_TUNE.lr
REHEARSAL_IF_MISSING = 0


def condition_settings(design: dict[str, Any], name: str, *, practice: bool = False) -> aw.PageSettings:
    """The Attention page's settings for condition ``name``: its locked settings, and as many
    candidates as its budget (the practice round's budget with ``practice``)."""
    condition = condition_of(design, name)
    unknown = sorted(set(condition["settings"]) - LOCKABLE)
    if unknown:
        raise StudyError(f"condition {name!r}: {', '.join(unknown)} cannot be set for an attention study "
                         f"(settings: {', '.join(sorted(LOCKABLE))})")
    known = {f.name for f in fields(aw.PageSettings)}
    budget = design.get("practice_budget", 2) if practice else condition["budget"]
    settings = aw.PageSettings.from_dict({"counterexamples": COUNTEREXAMPLES_IF_MISSING, "lr": LR_IF_MISSING,
                                          "rehearsal": REHEARSAL_IF_MISSING,
                                          **{k: v for k, v in condition["settings"].items() if k in known},
                                          "per_round": int(budget)})
    if not isinstance(settings.counterexamples, bool):
        raise StudyError(f"condition {name!r}: counterexamples must be true or false (got {settings.counterexamples!r})")
    if settings.mode not in ("click", "polygon"):
        raise StudyError(f"condition {name!r}: mode must be click or polygon (got {settings.mode!r})")
    return settings


class AttentionCondition:
    """The participant's current attention condition (or practice round) on its workbench."""

    def __init__(self, flow: ParticipantFlow, wb: Workbench) -> None:
        step = flow.step
        if step.kind not in ("condition", "practice"):
            raise StudyError(f"the current step is a {step.kind}, not a condition")
        if flow.task() != "attention":
            raise StudyError(f"this condition's task is {flow.task()}, not attention clicking")
        self.flow, self.wb = flow, wb
        self.practice = step.kind == "practice"
        self.condition = "" if self.practice else str(step.condition)  # practice events belong to no condition
        self.settings = condition_settings(flow.design, str(step.condition), practice=self.practice)

    # ------------------------------------------------------------------ reading
    def round(self) -> aw.Round:
        """The condition's images: chosen on first call by its sampler and saved with the workbench."""
        rnd = aw.load_round(self.wb)
        if rnd is None:
            rnd = aw.start_round(self.wb, self.settings)
        return rnd

    def confirmed(self) -> set[int]:
        return {a.example_id for a in aw.annotations_of(self.wb)}

    def current(self) -> int | None:
        """The next image to annotate (None: the condition's images are all done)."""
        done = self.confirmed()
        return next((i for i in self.round().ids if i not in done), None)

    # ------------------------------------------------------------------ gestures (logged before the page reacts)
    def _log(self, kind: str, example_id: int | None, payload: dict[str, Any] | None = None,
             now: float | None = None) -> None:
        extra = {"practice": True} if self.practice else {}
        self.flow.studies.log(self.flow.token, self.condition, kind, None if example_id is None else str(example_id),
                              {**extra, **(payload or {})}, t=now)

    def show(self, example_id: int, now: float | None = None) -> bool:
        """Record the first time the image is shown (the start of its time); True if this was it."""
        now = time.time() if now is None else now
        rnd = self.round()
        if not rnd.mark_shown(example_id, now):
            return False
        aw.save_round(self.wb, rnd)
        self._log(SHOW, example_id, now=now)
        return True

    def gesture(self, kind: str, example_id: int, payload: dict[str, Any] | None = None,
                now: float | None = None) -> None:
        """One click, undo, redo, clear or polygon point on the image."""
        if kind not in OPERATIONS:
            raise StudyError(f"{kind!r} is not a gesture (one of {', '.join(sorted(OPERATIONS))})")
        self._log(kind, example_id, payload, now)

    def confirm(self, annotation: AttentionAnnotation, now: float | None = None) -> AttentionAnnotation:
        """Store the image's annotation, log the confirmation and count the item: all three on
        disk when this returns. The mode must be the condition's."""
        if annotation.mode != self.settings.mode:
            raise StudyError(f"this condition annotates by {self.settings.mode}, not {annotation.mode}")
        if annotation.example_id not in self.round().ids:
            raise StudyError(f"image {annotation.example_id} is not one of this condition's images")
        now = time.time() if now is None else now
        ann = aw.confirm(self.wb, self.round(), annotation, now)
        self._log(CONFIRM, ann.example_id, {"seconds": ann.seconds, "operations": ann.operations,
                                            "mode": ann.mode, "positives": len(ann.positives)}, now)
        self.flow.sync_items(len(self.confirmed() & set(self.round().ids)))
        return ann

    # ------------------------------------------------------------------ the end of the condition
    def start_fine_tune(self):
        """Fine-tune on the condition's annotations in the background (the page shows its progress)."""
        if not self.confirmed():
            raise StudyError("nothing was annotated in this condition: there is nothing to fine-tune on")
        self._log("fine_tune", None, {"annotations": len(self.confirmed())})
        return aw.start_fine_tune(self.wb, self.settings)

    def finish(self, expected: int | None = None):
        """Record the outcome of the workbench's current model (the fine-tuned version when the
        fine-tune finished) and go to the next step."""
        outcome = condition_outcome(self.wb.model, self.wb.data)
        self._log("condition_done", None, {**outcome, "version": self.wb.current_version})
        return self.flow.finish_condition(outcome, expected=expected)
