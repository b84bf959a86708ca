"""A latent-editing condition of a study (seed 000's user study: move points in the 2D
projection, then fine-tune toward the moves) without any UI: the condition's locked settings
(which gesture it allows: ``lasso`` or ``box`` selection sent to a class centroid, or ``drag``
of single points on a canvas), the points it shows and may move (chosen once from the
condition's starting model and kept with the workbench, so a refresh shows the same ones),
every selection and move logged before the page reacts, each move confirmed as one item of
the budget, and the fine-tune whose model is the condition's outcome.

An item is a move: it is "shown" when the map is ready for it (the first drawing, or
the previous move) and confirmed when it is made, so its seconds are the time the participant
took for that gesture and its gestures the selections and moves in between.
``core.feedback.latent.workflow`` does the latent work itself (projection, moves, fine-tune).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from core.feedback.latent.loss import VARIANTS, Move
from core.feedback.latent.workflow import (
    UPDATE,
    LatentView,
    UpdateSettings,
    latent_view,
    load_moves,
    load_or_fit_projection,
    save_moves,
    start_update,
)
from core.study.design import CONFIRM, SHOW
from core.study.condition import StudyCondition, locked_settings
from core.study.store import StudyError

TASK = "latent"
GESTURES = ("lasso", "box", "drag")
#: settings a study may lock per latent condition
LOCKABLE = frozenset({"gesture", "points", "draggable", "epochs", "lr", "momentum", "w_cls", "w_dis", "variant"})
ITEMS_KEY = "study.latent.items"  # in the workbench's page state


@dataclass(frozen=True)
class LatentStudySettings:
    """A latent condition's settings: the gesture, how many points it shows (mistakes first)
    and how many of them the drag canvas makes draggable, and the fine-tune (the paper's)."""

    gesture: str = "lasso"
    points: int = 300
    draggable: int = 30
    # the fine-tune's fields a design may lock, flat as the design stores them; defaults: an Update's
    epochs: int = UPDATE.epochs
    lr: float = UPDATE.lr
    momentum: float = UPDATE.momentum
    w_cls: float = UpdateSettings.w_cls
    w_dis: float = UpdateSettings.w_dis
    variant: str = UpdateSettings.variant

    def update(self, device: str | None = None) -> UpdateSettings:
        train = replace(UPDATE, epochs=int(self.epochs), lr=float(self.lr), momentum=float(self.momentum), device=device)
        return UpdateSettings(train, w_cls=float(self.w_cls), w_dis=float(self.w_dis), variant=self.variant)


def condition_settings(design: dict[str, Any], name: str, *, practice: bool = False) -> LatentStudySettings:
    """Condition ``name``'s settings, locked by the design (the practice round's are the same)."""
    raw = locked_settings(design, name, TASK, LOCKABLE)
    known = {f.name for f in fields(LatentStudySettings)}
    try:
        s = LatentStudySettings(**{k: v for k, v in raw.items() if k in known})
    except TypeError as exc:
        raise StudyError(f"condition {name!r}: {exc}") from None
    if s.gesture not in GESTURES:
        raise StudyError(f"condition {name!r}: gesture must be one of {', '.join(GESTURES)} (got {s.gesture!r})")
    if s.variant not in VARIANTS:
        raise StudyError(f"condition {name!r}: variant must be one of {', '.join(VARIANTS)} (got {s.variant!r})")
    for what, value, lo, hi in (("points", s.points, 10, 5000), ("draggable", s.draggable, 1, 200),
                                ("epochs", s.epochs, 1, 10)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise StudyError(f"condition {name!r}: {what} must be a whole number from {lo} to {hi} (got {value!r})")
    return s


class LatentCondition(StudyCondition):
    """The participant's current latent condition (or practice round) on its workbench."""

    task = TASK
    settings_for = staticmethod(condition_settings)
    settings: LatentStudySettings

    # ------------------------------------------------------------------ the map (fixed for the condition)
    def branch(self, progress=None):
        """The projection branch: fitted once from the condition's starting model, kept on disk."""
        return load_or_fit_projection(self.wb, progress=progress)

    def view(self, branch, progress=None) -> LatentView:
        """The pool split on the map under the current model (the starting one until the fine-tune)."""
        return latent_view(self.wb, branch, progress)

    def items(self, view: LatentView) -> dict[str, Any]:
        """The points shown and the draggable ones (example ids, mistakes first), the moves made
        and the items shown: chosen on first call from ``view`` and saved with the workbench."""
        items = self.wb.get_state(ITEMS_KEY)
        if items is None:
            s = self.settings
            wrong = [int(e) for e in view.ids[view.wrong]]
            right = [int(e) for e in np.random.default_rng(0).permutation(view.ids[~view.wrong])]
            shown = (wrong + right)[: max(int(s.points), 1)]
            items = {"shown": sorted(shown), "draggable": shown[: int(s.draggable)], "made": [], "shown_items": {}}
            self.wb.put_state(ITEMS_KEY, items)
        return items

    def _items(self) -> dict[str, Any]:
        items = self.wb.get_state(ITEMS_KEY)
        if items is None:
            raise StudyError("the condition's points are not chosen yet: draw the map first")
        return items

    def made(self) -> list[dict[str, Any]]:
        """The moves confirmed so far, in order (each: ``item``, ``ids``, ``targets``, ``gesture``, ``t``)."""
        items = self.wb.get_state(ITEMS_KEY) or {}
        return list(items.get("made", []))

    def current_item(self) -> str | None:
        """The name of the next move ("move-3"), or None when the budget is used up."""
        k = len(self.made())
        return f"move-{k + 1}" if k < self.budget else None

    def moves(self):
        return load_moves(self.wb)

    # ------------------------------------------------------------------ gestures (logged before the page reacts)
    def show(self, now: float | None = None) -> bool:
        """Record when the map is first ready for the current move (its time starts there)."""
        item = self.current_item()
        items = self._items()
        if item is None or item in items["shown_items"]:
            return False
        now = time.time() if now is None else now
        self._log(SHOW, item, None, now)
        items["shown_items"][item] = now
        self.wb.put_state(ITEMS_KEY, items)
        return True

    def select(self, example_ids: list[int], tool: str, now: float | None = None) -> None:
        """A lasso or box selection of points (logged: it is a gesture of the move that follows)."""
        item = self.current_item()
        if item is None:
            raise StudyError("the moves of this condition are used up")
        self._gesture("select", item, {"tool": tool, "points": len(example_ids),
                                       "ids": [int(e) for e in example_ids][:200]}, now)

    def move(self, view: LatentView, example_ids: list[int], targets: list[tuple[float, float]],
             now: float | None = None) -> dict[str, Any]:
        """One move (the condition's gesture: a drop, or the selection sent to a centroid): logged,
        then the moves and the confirmed item saved in one write, then the confirmation logged and
        the item counted. The next move's time starts now."""
        item = self.current_item()
        if item is None:
            raise StudyError("the moves of this condition are used up: press Done")
        items = self._items()
        allowed = set(items["draggable"] if self.settings.gesture == "drag" else items["shown"])
        ids = [int(e) for e in example_ids]
        if not ids or len(ids) != len(targets):
            raise StudyError("a move needs at least one point and a target for each")
        if not set(ids) <= allowed:
            raise StudyError(f"points {sorted(set(ids) - allowed)[:5]} cannot be moved in this condition")
        idx = view.index_of()
        now = time.time() if now is None else now
        targets = [(float(x), float(y)) for x, y in targets]
        self._gesture("move", item, {"gesture": self.settings.gesture, "ids": ids[:200], "points": len(ids),
                                     "targets": [list(t) for t in targets][:200]}, now)
        moves = load_moves(self.wb)
        moves.add([Move(e, tuple(map(float, view.coords[idx[e]])), t) for e, t in zip(ids, targets)], on=int(view.version))
        record = {"item": item, "ids": ids, "targets": [list(t) for t in targets], "gesture": self.settings.gesture,
                  "t": now}
        items["made"].append(record)
        save_moves(self.wb, moves, **{ITEMS_KEY: items})
        shown = items["shown_items"].get(item, now)
        self._log(CONFIRM, item, {"seconds": round(now - shown, 3), "operations": len(ids),
                                  "gesture": self.settings.gesture}, now)
        self.flow.sync_items(len(items["made"]))
        self.show(now)  # the next move (if any) starts now
        return record

    # ------------------------------------------------------------------ the end of the condition
    def start_fine_tune(self, branch, view: LatentView):
        """Fine-tune toward the moves in the background (the page shows its progress)."""
        moves = load_moves(self.wb)
        if not self.made() or len(moves) == 0:
            raise StudyError("no point was moved in this condition: there is nothing to fine-tune on")
        try:
            job = start_update(self.wb, branch, moves, view, self.settings.update(self.wb.settings.get("device", "cpu")))
        except ValueError as exc:  # the latent workflow's refusals (another version drawn, ...), as the page shows them
            raise StudyError(str(exc)) from None
        self._mark_fine_tune({"moves": len(self.made()), "points": len(moves)})
        return job
