"""A grid-feedback condition of a study (seed 002's review of uncertain mistakes) without any
UI: the condition's locked settings, its images (the ``budget`` uncertain mistakes of the
training split under the condition's starting model, chosen once and kept with the workbench,
so a refresh shows the same ones), every mark, erase, undo and clear logged before the page
reacts, a confirm per image (its squares stored as a :class:`GridAnnotation`), and the
fine-tune whose model is the condition's outcome.

``marks`` (default on) says what the condition is: on, the participant marks the squares the
model must not use and the fine-tune trains with the grid penalty (and counterexamples when
they are on) on those marks; off ("no marks"), the participant looks at the same kind of
images without a grid and the fine-tune is the same training without feedback (the paper's
baseline). ``core.feedback.grid.workflow`` and ``core.feedback.grid.loss`` do the grid work itself.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from core.engine import TrainConfig, predict
from core.feedback.counterexamples import CounterexampleSettings
from core.feedback.grid.loss import FEEDBACK as GRID, KIND, GridAnnotation, GridSettings
from core.feedback.grid.job import GridPageSettings
from core.feedback.grid.workflow import REVIEW_SAMPLERS, review_candidates
from core.session.runs import FineTune, JobOptions, KindPlan
from core.select import PoolView, get_sampler
from core.study.design import CONFIRM, SHOW
from core.study.condition import StudyCondition, locked_settings
from core.study.store import StudyError

TASK = "grid"
#: settings a study may lock per grid condition (the rest keep the Grid feedback page's defaults)
LOCKABLE = frozenset({"marks", "sampler", "epochs", "lr", "batch_size", "n", "method", "share", "opacity",
                      "penalty", "counterexamples", "cex_k"})
ROUND_KEY = "study.grid.round"  # in the workbench's page state
STUDY_EPOCHS = 2  # a study's fine-tune is short: the participant waits for it


@dataclass(frozen=True)
class GridStudySettings:
    """A grid condition's settings: whether the participant marks squares, and the fine-tune."""

    marks: bool = True
    page: GridPageSettings = field(default_factory=lambda: GridPageSettings(epochs=STUDY_EPOCHS))

    def fine_tune_config(self, seed: int = 0, device: str | None = None) -> TrainConfig:
        return self.page.config(seed, device)

    def counterexamples(self, seed: int = 0) -> CounterexampleSettings:
        """The counterexamples of the marked squares (disabled without marks or when off)."""
        s = self.page.counterexample_settings(seed)
        return CounterexampleSettings(enabled=bool(s.enabled and self.marks), k=s.k, seed=s.seed)


def condition_settings(design: dict[str, Any], name: str, *, practice: bool = False) -> GridStudySettings:
    """Condition ``name``'s settings, locked by the design (``practice`` reads the same ones:
    the practice round reviews as the first condition does)."""
    raw = locked_settings(design, name, TASK, LOCKABLE)
    marks = raw.pop("marks", True)
    if not isinstance(marks, bool):
        raise StudyError(f"condition {name!r}: marks must be true or false (got {marks!r})")
    for flag in ("penalty", "counterexamples"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise StudyError(f"condition {name!r}: {flag} must be true or false (got {raw[flag]!r})")
    known = {f.name for f in fields(GridPageSettings)}
    page = GridPageSettings.from_dict({**asdict(GridPageSettings(epochs=STUDY_EPOCHS)),
                                       **{k: v for k, v in raw.items() if k in known}})
    if page.sampler not in REVIEW_SAMPLERS:
        raise StudyError(f"condition {name!r}: sampler must be one of {', '.join(REVIEW_SAMPLERS)} "
                         f"(got {page.sampler!r})")
    if not 1 <= int(page.epochs) <= 50:
        raise StudyError(f"condition {name!r}: epochs must be 1 to 50 (got {page.epochs!r})")
    if marks and not page.penalty and not page.counterexamples:
        raise StudyError(f"condition {name!r}: with marks, turn on the penalty, the counterexamples or both "
                         "(with neither the marks would change nothing)")
    return GridStudySettings(marks=marks, page=page)


def choose_images(model, data, k: int, sampler: str, seed: int = 0) -> list[int]:
    """``k`` training images to review: the mistakes ``sampler`` ranks first
    (:func:`core.feedback.grid.workflow.review_candidates`), filled up, when the model makes fewer
    mistakes than that, with the right ones it is least sure of (entropy)."""
    ids = [int(i) for i in review_candidates(model, data, k, method=sampler, seed=seed)]
    if len(ids) < k:
        rest = np.asarray([i for i in data.ids("train") if int(i) not in set(ids)], dtype=np.int64)
        if len(rest):
            probs = torch.softmax(predict(model, data.images[torch.as_tensor(rest)])[0], 1).numpy()
            ids += [int(i) for i in get_sampler("entropy").rank(PoolView(ids=rest, probs=probs), seed=seed,
                                                                  k=min(k - len(ids), len(rest)))]
    return ids


class GridCondition(StudyCondition):
    """The participant's current grid condition (or practice round) on its workbench."""

    task = TASK
    settings_for = staticmethod(condition_settings)
    settings: GridStudySettings

    # ------------------------------------------------------------------ reading
    def round(self) -> dict[str, Any]:
        """The condition's images and their marks: chosen on first call and saved with the
        workbench (``ids``, grid size ``n``, ``shown`` times, ``marks``, ``undo``, ``ops``,
        ``confirmed``)."""
        rnd = self.wb.get_state(ROUND_KEY)
        if rnd is None:
            data = self.wb.data
            with self.wb.lock:
                model = self.wb.model
            ids = choose_images(model, data, self.budget, self.settings.page.sampler)
            rnd = {"ids": ids, "n": self.settings.page.grid(tuple(data.image_shape[1:])), "shown": {}, "marks": {},
                   "undo": {}, "ops": {}, "confirmed": []}
            self.wb.put_state(ROUND_KEY, rnd)
        return rnd

    def _save(self, rnd: dict[str, Any]) -> None:
        self.wb.put_state(ROUND_KEY, rnd)

    def confirmed(self) -> list[int]:
        return [int(i) for i in self.round()["confirmed"]]

    def current(self) -> int | None:
        """The next image to review (None: all of the condition's images are confirmed)."""
        rnd = self.round()
        return next((int(i) for i in rnd["ids"] if int(i) not in set(rnd["confirmed"])), None)

    def squares(self, example_id: int) -> list[int]:
        return list(self.round()["marks"].get(str(int(example_id)), []))

    def can_undo(self, example_id: int) -> bool:
        return bool(self.round()["undo"].get(str(int(example_id))))

    # ------------------------------------------------------------------ gestures (logged before the page reacts)
    def show(self, example_id: int, now: float | None = None) -> bool:
        """Record the first time the image is shown (the start of its time); True if this was it."""
        rnd = self.round()
        key = str(int(example_id))
        if key in rnd["shown"]:
            return False
        now = time.time() if now is None else now
        self._log(SHOW, example_id, {"position": rnd["ids"].index(int(example_id)) + 1}, now)
        rnd["shown"][key] = now
        self._save(rnd)
        return True

    def _set(self, example_id: int, squares: list[int], rnd: dict[str, Any]) -> None:
        key = str(int(example_id))
        rnd["undo"].setdefault(key, []).append(rnd["marks"].get(key, []))
        rnd["marks"][key] = sorted({int(s) for s in squares})
        rnd["ops"][key] = rnd["ops"].get(key, 0) + 1
        self._save(rnd)

    def toggle(self, example_id: int, square: int, now: float | None = None) -> list[int]:
        """Mark a square (or erase it when marked): logged, then saved. Returns the image's squares."""
        if not self.settings.marks:
            raise StudyError("this condition has no marks: its images are only looked at")
        rnd = self.round()
        n = int(rnd["n"])
        if not 0 <= int(square) < n * n:
            raise StudyError(f"square {square} is not on the {n} x {n} grid")
        old = self.squares(example_id)
        erase = int(square) in old
        self._gesture("erase" if erase else "mark", example_id, {"square": int(square)}, now)
        self._set(example_id, [s for s in old if s != int(square)] if erase else old + [int(square)], rnd)
        return self.squares(example_id)

    def undo(self, example_id: int, now: float | None = None) -> bool:
        rnd = self.round()
        stack = rnd["undo"].get(str(int(example_id))) or []
        if not stack:
            return False
        self._gesture("undo", example_id, None, now)
        rnd["marks"][str(int(example_id))] = stack.pop()
        rnd["ops"][str(int(example_id))] = rnd["ops"].get(str(int(example_id)), 0) + 1
        self._save(rnd)
        return True

    def clear(self, example_id: int, now: float | None = None) -> None:
        if not self.squares(example_id):
            return
        self._gesture("clear", example_id, None, now)
        self._set(example_id, [], self.round())

    def confirm(self, example_id: int, now: float | None = None) -> GridAnnotation:
        """Confirm the image's marks (none is an answer too): the annotation (when it has squares)
        and the confirmed list in one write, then the confirm event and the item count."""
        rnd = self.round()
        example_id = int(example_id)
        if example_id not in rnd["ids"]:
            raise StudyError(f"image {example_id} is not one of this condition's images")
        now = time.time() if now is None else now
        shown = rnd["shown"].get(str(example_id), now)
        data = self.wb.data
        ann = GridAnnotation(example_id, int(data.labels[example_id]), tuple(data.image_shape[1:]), int(rnd["n"]),
                             tuple(self.squares(example_id)), self.settings.page.method, None,
                             round(max(0.0, now - shown), 3), int(rnd["ops"].get(str(example_id), 0)),
                             {"study": True})
        if example_id not in rnd["confirmed"]:
            rnd["confirmed"].append(example_id)
        kept = [(a.example_id, a.payload) for a in self.wb.annotations(KIND) if a.example_id != example_id]
        items = kept + ([GRID.to_payload(ann)] if ann.squares else [])
        self.wb.replace_annotations(KIND, items, state={ROUND_KEY: rnd})
        self._log(CONFIRM, example_id, {"seconds": ann.seconds, "operations": len(ann.squares),
                                        "squares": list(ann.squares), "grid": ann.n, "marks": self.settings.marks},
                  now)
        self.flow.sync_items(len(set(rnd["confirmed"]) & set(rnd["ids"])))
        return ann

    def annotations(self) -> list[GridAnnotation]:
        """The confirmed images that have marked squares (what the penalty trains on)."""
        return [GRID.from_payload(a.example_id, a.payload) for a in self.wb.annotations(KIND)]

    # ------------------------------------------------------------------ the end of the condition
    def start_fine_tune(self):
        """Fine-tune in the background on the training split: with the marks' penalty (and their
        counterexamples when on), or without feedback for a "no marks" condition."""
        if not self.confirmed():
            raise StudyError("no image was reviewed in this condition: there is nothing to fine-tune on")
        s = self.settings
        config = s.fine_tune_config(device=self.wb.settings.get("device", "cpu"))
        anns = self.annotations() if s.marks else []
        study = {"study": {"reviewed": self.confirmed(), "marks": s.marks}}
        if not s.marks or not anns:  # nothing marked: the same training without feedback
            job = self.wb.train(config, JobOptions(f"study grid condition: {len(self.confirmed())} images reviewed, "
                                                   "no marks (training without feedback)", kind="grid"),
                                KindPlan(feedback={"kind": KIND, "grid": {"reviews": [], **study}}))
        else:
            fine_tune = FineTune(config, GridSettings(share=float(s.page.share)), guidance=bool(s.page.penalty),
                                 counterexamples=s.counterexamples(), on_annotated=False, feedback={"grid": study})
            job = self.wb.start_training(GRID, anns, fine_tune, JobOptions(kind="grid"))
        self._mark_fine_tune({"reviewed": len(self.confirmed()), "marked_images": len(anns), "marks": s.marks})
        return job
