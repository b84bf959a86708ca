"""A participant's way through a study: the design with its defaults, the ordered steps of one
participant (instructions, an optional practice round, each condition followed by its
questionnaires, the final questionnaires), and the progress that lets a refresh or a server
restart resume exactly where they were.

Progress lives in the participants table (:meth:`core.study.store.StudyStore.set_progress`) as
a small JSON object: the step index, the items done in the current condition, the workbench
each condition runs on, and when each condition started. Every change is written before the
call returns. No Streamlit here; the participant page only draws the current step.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.data import ImageDataset
from core.engine import evaluate
from core.models import SteerableModel
from core.study.design import likert_template
from core.study.store import Participant, StudyError, StudyStore, check_design

TASKS = {"attention": "images", "latent": "moves", "grid": "images"}  # task -> what its budget counts
INSTRUMENTS = ("sus", "tlx", "likert")
DEFAULT_BUDGET = 16  # seed 001's sessions annotate 16 images per condition


@dataclass(frozen=True)
class Step:
    """One screen of a participant's study.

    ``kind``: "intro", "practice", "condition", "questionnaire" or "done". ``condition``: the
    condition the step belongs to (None for intro, final questionnaires and done; the practice
    round uses the participant's first condition). ``instrument``: "sus", "tlx" or "likert"
    for a questionnaire.
    """

    kind: str
    condition: str | None = None
    instrument: str | None = None

    @property
    def answers_step(self) -> str:
        """The ``step`` a questionnaire's answers are saved under (a condition or "final")."""
        return self.condition or "final"


def normalize_design(design: dict[str, Any]) -> dict[str, Any]:
    """The design with every field checked and defaults filled in (a new dict).

    Fields: ``task`` (attention, latent or grid: the task of a condition that names none),
    ``dataset``, ``arch``, ``conditions`` (2-4, each ``name``, ``task`` (default: the design's,
    so one study can hold conditions of different tasks), ``settings`` locked for the
    participant, ``budget`` >= 1 items (images, or moves for a latent condition),
    ``time_limit_s`` or None, ``instructions`` Markdown), ``intro`` Markdown, ``practice``
    (bool) and ``practice_budget``, ``questionnaires``: ``after_each`` and ``final`` lists of
    instruments, ``likert_items`` (by default seed 001's items for these conditions:
    :func:`core.study.design.likert_template`). Raises :class:`StudyError`
    saying what to fix.
    """
    d = copy.deepcopy(check_design(dict(design)))
    task = d.setdefault("task", "attention")
    if task not in TASKS:
        raise StudyError(f"the task must be one of {', '.join(TASKS)} (got {task!r})")
    d.setdefault("dataset", "biased-digits")
    d.setdefault("arch", "seed-cnn")
    d.setdefault("intro", "")
    for c in d["conditions"]:
        c["name"] = c["name"].strip()
        c.setdefault("task", task)
        if c["task"] not in TASKS:
            raise StudyError(f"condition {c['name']!r}: the task must be one of {', '.join(TASKS)} (got {c['task']!r})")
        c.setdefault("settings", {})
        if not isinstance(c["settings"], dict):
            raise StudyError(f"condition {c['name']!r}: settings must be a mapping of setting to value")
        c["budget"] = _positive_int(c.get("budget", DEFAULT_BUDGET), f"condition {c['name']!r}: budget")
        limit = c.get("time_limit_s")
        if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit <= 0):
            raise StudyError(f"condition {c['name']!r}: the time limit must be a positive number of seconds or empty")
        c["time_limit_s"] = limit
        c.setdefault("instructions", "")
    d["practice"] = bool(d.get("practice", False))
    d["practice_budget"] = _positive_int(d.get("practice_budget", 2), "practice budget")
    q = d.setdefault("questionnaires", {})
    q.setdefault("after_each", ["sus", "tlx"])
    q.setdefault("final", ["likert"])
    for when in ("after_each", "final"):
        unknown = [i for i in q[when] if i not in INSTRUMENTS]
        if unknown or len(set(q[when])) != len(q[when]):
            raise StudyError(f"questionnaires {when}: each of {', '.join(INSTRUMENTS)} at most once "
                             f"(got {', '.join(map(str, q[when])) or 'none'})")
    if "likert_items" not in d:  # seed 001's questionnaire, asked about this study's own conditions
        d["likert_items"] = likert_template(d["conditions"])
    if "likert" in q["after_each"] + q["final"] and not d["likert_items"]:
        raise StudyError("the Likert questionnaire is asked but has no items")
    return d


def new_design(*, task: str, dataset: str, conditions: list[dict[str, Any]], intro: str = "",
               practice: bool = False, after_each: list[str] | tuple[str, ...] = (),
               final: list[str] | tuple[str, ...] = (), likert_texts: str = "", arch: str = "seed-cnn") -> dict[str, Any]:
    """A checked design from the New study form's fields (:func:`normalize_design`).
    ``likert_texts``: the typed Likert items, one per line (blank lines skipped); none typed:
    seed 001's items for these conditions. Raises :class:`StudyError` as normalize_design does."""
    typed = [t.strip() for t in likert_texts.splitlines() if t.strip()]
    likert = ([{"id": f"Q{k + 1}", "kind": "likert", "text": t} for k, t in enumerate(typed)] if typed
              else likert_template(conditions))
    return normalize_design({"task": task, "dataset": dataset, "arch": arch, "intro": intro, "conditions": conditions,
                             "practice": practice, "questionnaires": {"after_each": list(after_each), "final": list(final)},
                             "likert_items": likert})


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{what} must be a whole number of at least 1 (got {value!r})")
    return value


def steps_for(design: dict[str, Any], order: list[str]) -> list[Step]:
    """Every step of a participant whose conditions come in ``order``, ending with "done"."""
    d = normalize_design(design)
    out: list[Step] = [Step("intro")]
    if d["practice"]:
        out.append(Step("practice", order[0]))
    for name in order:
        out.append(Step("condition", name))
        out += [Step("questionnaire", name, i) for i in d["questionnaires"]["after_each"]]
    out += [Step("questionnaire", None, i) for i in d["questionnaires"]["final"]]
    out.append(Step("done"))
    return out


def condition_of(design: dict[str, Any], name: str) -> dict[str, Any]:
    """The normalized condition called ``name``."""
    for c in normalize_design(design)["conditions"]:
        if c["name"] == name:
            return c
    raise StudyError(f"no condition {name!r} in this study")


def condition_outcome(model: SteerableModel, data: ImageDataset) -> dict[str, float | None]:
    """Accuracy (percent) of a condition's final model: ``test_acc`` over every test image, and
    for a biased set (one with a ``test_aligned`` split beside its bias-conflicting ``test``
    split) ``conflicting_acc`` on the bias-conflicting test images (None otherwise)."""
    test = evaluate(model, *data.split("test"))
    if "test_aligned" not in data.splits:
        return {"test_acc": 100 * test.accuracy, "conflicting_acc": None}
    aligned = evaluate(model, *data.split("test_aligned"))
    n, m = len(data.ids("test")), len(data.ids("test_aligned"))
    return {"test_acc": 100 * (test.accuracy * n + aligned.accuracy * m) / (n + m),
            "conflicting_acc": 100 * test.accuracy}


class ParticipantFlow:
    """One participant's position in the study, read from and written to the store."""

    def __init__(self, studies: StudyStore, token: str) -> None:
        self.studies = studies
        self.participant: Participant = studies.participant(token)  # StudyError for a bad token
        self.design = normalize_design(studies.study(self.participant.study_id)["design"])
        self.steps = steps_for(self.design, self.participant.conditions)

    # ------------------------------------------------------------------ reading
    @property
    def token(self) -> str:
        return self.participant.token

    @property
    def progress(self) -> dict[str, Any]:
        return self.participant.progress

    @property
    def index(self) -> int:
        return min(int(self.progress.get("step", 0)), len(self.steps) - 1)

    @property
    def step(self) -> Step:
        return self.steps[self.index]

    def budget(self, step: Step | None = None) -> int:
        """How many items the (current) condition or practice step asks for."""
        step = step or self.step
        if step.kind == "practice":
            return self.design["practice_budget"]
        if step.kind == "condition":
            return condition_of(self.design, step.condition)["budget"]
        return 0

    @property
    def items_done(self) -> int:
        return int(self.progress.get("items_done", 0))

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds left in the current condition's time limit (None: no limit or not a condition)."""
        step = self.step
        if step.kind != "condition":
            return None
        limit = condition_of(self.design, step.condition)["time_limit_s"]
        started = self.progress.get("started", {}).get(step.condition)
        if limit is None or started is None:
            return limit
        return max(0.0, limit - ((time.time() if now is None else now) - started))

    def condition_finished(self, now: float | None = None) -> bool:
        """The budget is used up or the time limit has passed."""
        if self.step.kind not in ("condition", "practice"):
            return False
        left = self.time_left(now)
        return self.items_done >= self.budget() or (left is not None and left <= 0)

    def task(self, step: Step | None = None) -> str:
        """The task of the (current) condition or practice round (attention, latent or grid)."""
        step = step or self.step
        if step.condition is None:
            return self.design["task"]
        return condition_of(self.design, step.condition)["task"]

    def label(self) -> str:
        """What the participant always sees, e.g. "condition 2 of 3, image 5 of 16"."""
        step, order = self.step, self.participant.conditions
        unit = TASKS[self.task()][:-1]  # image / move
        if step.kind == "practice":
            return f"practice round, {unit} {min(self.items_done + 1, self.budget())} of {self.budget()}"
        if step.kind == "condition":
            return (f"condition {order.index(step.condition) + 1} of {len(order)}, "
                    f"{unit} {min(self.items_done + 1, self.budget())} of {self.budget()}")
        if step.kind == "questionnaire":
            after = f" after condition {order.index(step.condition) + 1} of {len(order)}" if step.condition else ""
            return f"questionnaire{after}"
        return "introduction" if step.kind == "intro" else "finished, thank you"

    # ------------------------------------------------------------------ writing (each one committed)
    def _save(self, progress: dict[str, Any]) -> None:
        self.studies.set_progress(self.token, progress)
        self.participant = self.studies.participant(self.token)

    def start_condition(self, make_workbench: Callable[[], str], now: float | None = None) -> str:
        """The workbench id of the current condition (or practice round): the one recorded
        for it if any (a refresh or restart resumes it), else ``make_workbench()`` (a fresh
        workbench on the study's base model), recorded with the start time before returning."""
        step = self.step
        if step.kind not in ("condition", "practice"):
            raise StudyError(f"the current step is a {step.kind}, not a condition")
        slot = "practice" if step.kind == "practice" else step.condition
        progress = copy.deepcopy(self.progress)
        known = progress.get("workbenches", {}).get(slot)
        if known:
            return known
        wb_id = make_workbench()
        progress.setdefault("workbenches", {})[slot] = wb_id
        progress.setdefault("started", {})[slot] = time.time() if now is None else now
        self._save(progress)
        return wb_id

    def sync_items(self, done: int) -> int:
        """Set the current condition's item count to ``done`` (the confirmed annotations, the
        truth a page counts from), so a kill between storing an item and counting it heals."""
        if self.step.kind not in ("condition", "practice"):
            raise StudyError(f"the current step is a {self.step.kind}: there is no item to count")
        if done != self.items_done:
            progress = copy.deepcopy(self.progress)
            progress["items_done"] = int(done)
            self._save(progress)
        return self.items_done

    def finish_condition(self, outcome: Mapping[str, float | None], expected: int | None = None) -> Step:
        """Record the condition's model outcome (see :func:`condition_outcome`) for the results,
        then go to the next step; both in one write. ``expected`` as in :meth:`advance`."""
        step = self.step
        if step.kind not in ("condition", "practice"):
            raise StudyError(f"the current step is a {step.kind}, not a condition")
        if expected is not None and expected != self.index:
            return step
        progress = copy.deepcopy(self.progress)
        if step.kind == "condition":  # a practice round's model is not a result
            progress.setdefault("outcomes", {})[step.condition] = {
                k: (None if outcome.get(k) is None else float(outcome[k])) for k in ("test_acc", "conflicting_acc")}
        progress["step"] = min(self.index + 1, len(self.steps) - 1)
        progress["items_done"] = 0
        self._save(progress)
        return self.step

    def advance(self, expected: int | None = None) -> Step:
        """Go to the next step (items counted from zero again). ``expected``: the step index
        the page showed; a stale second tab that advances again is ignored."""
        if expected is not None and expected != self.index:
            return self.step
        progress = copy.deepcopy(self.progress)
        progress["step"] = min(self.index + 1, len(self.steps) - 1)
        progress["items_done"] = 0
        self._save(progress)
        return self.step
