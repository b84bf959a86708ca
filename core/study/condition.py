"""What every study condition class shares (latent and grid; see ``core.study.attention`` for
the attention one, which came first): the participant's current condition or practice round,
its locked settings checked against the settings its task allows, and events logged (committed
to the store) before the page reacts to a gesture. No Streamlit here.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from core.study.design import OPERATIONS
from core.study.flow import ParticipantFlow, condition_of
from core.study.store import StudyError
from core.session.workbench import Workbench

#: what the workbench's page state says once a condition's fine-tune was started (a refresh then
#: waits for it, or starts it again after a restart lost the job, instead of asking for more items)
FINE_TUNE_KEY = "study.fine_tune_started"


def locked_settings(design: dict[str, Any], name: str, task: str, lockable: frozenset[str]) -> dict[str, Any]:
    """Condition ``name``'s locked settings, after checking that it is a ``task`` condition and
    that every setting is one ``lockable`` names. :class:`StudyError` saying what to fix."""
    condition = condition_of(design, name)
    if condition["task"] != task:
        raise StudyError(f"condition {name!r} is a {condition['task']} condition, not {task}")
    unknown = sorted(set(condition["settings"]) - lockable)
    if unknown:
        raise StudyError(f"condition {name!r}: {', '.join(unknown)} cannot be set for a {task} condition "
                         f"(settings: {', '.join(sorted(lockable))})")
    return dict(condition["settings"])


class StudyCondition:
    """The participant's current condition (or practice round) of ``task`` on its workbench."""

    task = ""
    #: the task's ``condition_settings(design, name, practice=...)`` (a staticmethod), read into ``settings``
    settings_for: Callable[..., Any] | None = None

    def __init__(self, flow: ParticipantFlow, wb: Workbench) -> None:
        step = flow.step
        if step.kind not in ("condition", "practice"):
            raise StudyError(f"the current step is a {step.kind}, not a condition")
        if flow.task() != self.task:
            raise StudyError(f"this condition's task is {flow.task()}, not {self.task}")
        self.flow, self.wb = flow, wb
        self.practice = step.kind == "practice"
        self.name = str(step.condition)
        self.condition = "" if self.practice else self.name  # practice events belong to no condition
        self.budget = flow.budget()
        if self.settings_for is not None:
            self.settings = self.settings_for(flow.design, self.name, practice=self.practice)

    def _log(self, kind: str, item: str | int | None, payload: dict[str, Any] | None = None,
             now: float | None = None) -> None:
        extra = {"practice": True} if self.practice else {}
        self.flow.studies.log(self.flow.token, self.condition, kind, None if item is None else str(item),
                              {**extra, "task": self.task, **(payload or {})}, t=now)

    def _gesture(self, kind: str, item: str | int, payload: dict[str, Any] | None = None,
                 now: float | None = None) -> None:
        if kind not in OPERATIONS:
            raise StudyError(f"{kind!r} is not a gesture (one of {', '.join(sorted(OPERATIONS))})")
        self._log(kind, item, payload, now)

    # ------------------------------------------------------------------ the end of the condition
    def fine_tune_started(self) -> bool:
        """Whether this condition's fine-tune was started (its job may be running, over, or lost)."""
        return bool(self.wb.get_state(FINE_TUNE_KEY))

    def _mark_fine_tune(self, payload: dict[str, Any]) -> None:
        self.wb.put_state(FINE_TUNE_KEY, {"t": time.time()})
        self._log("fine_tune", None, payload)

    def finish(self, expected: int | None = None):
        """Record the outcome of the workbench's current model (the fine-tuned version when the
        fine-tune finished; see :func:`core.study.flow.condition_outcome`) and go to the next step."""
        from core.study.flow import condition_outcome

        outcome = condition_outcome(self.wb.model, self.wb.data)
        self._log("condition_done", None, {**outcome, "version": self.wb.current_version})
        return self.flow.finish_condition(outcome, expected=expected)
