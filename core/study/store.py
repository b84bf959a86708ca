"""User studies in the workspace database: designs, participants with unguessable tokens and
their counterbalanced condition orders, progress (so a refresh or a restart resumes where a
participant was), gesture events and questionnaire answers.

Every write is one committed transaction before the call returns, so a page that logs an
event before it reacts to the gesture never shows something the record lacks.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from core.session.store import Store
from core.study.design import Event, order_for

MIN_CONDITIONS, MAX_CONDITIONS = 2, 4
STUDY_MARK = "study_participant"  # the workbench setting the participant page sets on each study workbench


class StudyError(ValueError):
    """A study design, token or event was not acceptable; the message says why."""


@dataclass(frozen=True)
class Participant:
    token: str
    study_id: str
    number: int
    conditions: list[str]  # the condition names in this participant's order
    progress: dict[str, Any]


def check_design(design: dict[str, Any]) -> dict[str, Any]:
    """The design with its conditions checked: 2-4 named conditions, names unique and not
    empty. Raises :class:`StudyError` saying what to fix."""
    conditions = design.get("conditions")
    if not isinstance(conditions, list) or not MIN_CONDITIONS <= len(conditions) <= MAX_CONDITIONS:
        raise StudyError(f"a study has {MIN_CONDITIONS} to {MAX_CONDITIONS} conditions "
                         f"(got {len(conditions) if isinstance(conditions, list) else 'none'})")
    names = [c.get("name", "").strip() if isinstance(c, dict) else "" for c in conditions]
    if not all(names):
        raise StudyError("every condition needs a name")
    if len(set(names)) != len(names):
        raise StudyError(f"condition names must differ (got {', '.join(names)})")
    return design


class StudyStore:
    """The study tables of one workspace (see ``core.study.schema.STUDY_SCHEMA``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------ studies
    def create_study(self, name: str, design: dict[str, Any], participants: int = 0, *,
                     refuse_repeat_s: float = 0.0) -> tuple[str, list[str]]:
        """A new study and its first ``participants`` tokens. Returns (study id, tokens).

        ``refuse_repeat_s``: a study of the same name and design created less than this many
        seconds ago is taken for a repeated click and refused (:class:`StudyError`)."""
        name = (name or "").strip()
        if not name:
            raise StudyError("a study needs a name")
        check_design(design)
        study_id = uuid.uuid4().hex[:12]
        now = time.time()
        with self.store._write() as db:  # (the store's transaction helper: one writer at a time)
            if refuse_repeat_s > 0:  # checked in the writing transaction: two clicks at once make one study
                for (created,) in db.execute("SELECT created FROM studies WHERE name = ? AND design = ? AND created > ?",
                                             (name, json.dumps(design), now - refuse_repeat_s)).fetchall():
                    raise StudyError(f"the same study {name!r} was created {now - created:.0f} s ago; to make "
                                     "another one, change its name or design")
            db.execute("INSERT INTO studies (id, name, design, created) VALUES (?,?,?,?)",
                       (study_id, name, json.dumps(design), now))
        return study_id, self.add_participants(study_id, participants)

    def studies(self) -> list[dict[str, Any]]:
        with self.store._read() as db:
            rows = db.execute("SELECT s.id, s.name, s.design, s.created, count(p.token) FROM studies s "
                              "LEFT JOIN participants p ON p.study_id = s.id GROUP BY s.id ORDER BY s.created").fetchall()
        return [{"id": i, "name": n, "design": json.loads(d), "created": c, "participants": k} for i, n, d, c, k in rows]

    def study(self, study_id: str) -> dict[str, Any]:
        for s in self.studies():
            if s["id"] == study_id:
                return s
        raise StudyError(f"no study {study_id!r} in this workspace")

    def add_participants(self, study_id: str, count: int) -> list[str]:
        """``count`` more participants, numbered on from the last, each with the next order
        of the balanced Latin square. Returns their tokens."""
        if count < 0:
            raise StudyError("the number of participants cannot be negative")
        names = [c["name"] for c in self.study(study_id)["design"]["conditions"]]
        tokens = []
        with self.store._write() as db:
            start = db.execute("SELECT coalesce(max(number) + 1, 0) FROM participants WHERE study_id = ?",
                               (study_id,)).fetchone()[0]
            for number in range(start, start + count):
                token = secrets.token_urlsafe(16)
                order = [names[i] for i in order_for(number, len(names))]
                db.execute("INSERT INTO participants (token, study_id, number, conditions, progress, created) "
                           "VALUES (?,?,?,?,?,?)", (token, study_id, number, json.dumps(order), "{}", time.time()))
                tokens.append(token)
        return tokens

    def participants(self, study_id: str) -> list[Participant]:
        with self.store._read() as db:
            rows = db.execute("SELECT token, study_id, number, conditions, progress FROM participants "
                              "WHERE study_id = ? ORDER BY number", (study_id,)).fetchall()
        return [Participant(t, s, n, json.loads(c), json.loads(p)) for t, s, n, c, p in rows]

    # ------------------------------------------------------------------ a participant
    def participant(self, token: str) -> Participant:
        """The participant with this token; :class:`StudyError` for any other string (the
        message does not say whether a similar token exists)."""
        if not isinstance(token, str) or not 8 <= len(token) <= 64:
            raise StudyError("this participant link is not valid")
        with self.store._read() as db:
            row = db.execute("SELECT token, study_id, number, conditions, progress FROM participants WHERE token = ?",
                             (token,)).fetchone()
        if row is None:
            raise StudyError("this participant link is not valid")
        t, s, n, c, p = row
        return Participant(t, s, n, json.loads(c), json.loads(p))

    def set_progress(self, token: str, progress: dict[str, Any]) -> None:
        """Where the participant is (step, condition, item, workbench ids...), for resuming."""
        self.participant(token)
        with self.store._write() as db:
            db.execute("UPDATE participants SET progress = ? WHERE token = ?", (json.dumps(progress), token))

    def log(self, token: str, condition: str, kind: str, item: str | None = None,
            payload: dict[str, Any] | None = None, t: float | None = None) -> int:
        """Record one gesture, committed before this returns. ``condition`` must be one of
        the participant's (or "" for events outside a condition, such as page views)."""
        p = self.participant(token)
        if condition and condition not in p.conditions:
            raise StudyError(f"condition {condition!r} is not in this participant's study")
        if not kind:
            raise StudyError("an event needs a kind")
        with self.store._write() as db:
            cur = db.execute("INSERT INTO study_events (participant, condition, t, kind, item, payload) VALUES (?,?,?,?,?,?)",
                             (token, condition, time.time() if t is None else float(t), kind,
                              None if item is None else str(item), json.dumps(payload or {})))
            return int(cur.lastrowid)

    def save_answers(self, token: str, step: str, instrument: str, answers: Any, score: float | None = None) -> None:
        """A questionnaire's answers after ``step`` (a condition name, or "final"); saving
        again replaces them."""
        p = self.participant(token)
        if step != "final" and step not in p.conditions:
            raise StudyError(f"step {step!r} is neither one of this participant's conditions nor 'final'")
        with self.store._write() as db:
            db.execute("INSERT OR REPLACE INTO study_answers (participant, step, instrument, answers, score, created) "
                       "VALUES (?,?,?,?,?,?)", (token, step, instrument, json.dumps(answers), score, time.time()))

    # ------------------------------------------------------------------ results
    def events(self, study_id: str, token: str | None = None) -> list[Event]:
        """The study's events in the order they were logged (one participant's with ``token``)."""
        query = ("SELECT e.participant, e.condition, e.t, e.kind, e.item, e.payload FROM study_events e "
                 "JOIN participants p ON p.token = e.participant WHERE p.study_id = ?")
        args: tuple = (study_id,)
        if token is not None:
            query, args = query + " AND e.participant = ?", (study_id, token)
        with self.store._read() as db:
            rows = db.execute(query + " ORDER BY e.id", args).fetchall()
        return [Event(p, c, t, k, i, json.loads(pl)) for p, c, t, k, i, pl in rows]

    def revision(self, study_id: str) -> tuple:
        """A value that changes whenever anything the results are computed from changes (the
        study's events, answers, participants and their progress), read in one cheap query
        each: to know when results computed earlier are still current."""
        with self.store._read() as db:
            events = db.execute("SELECT count(*), max(e.id) FROM study_events e JOIN participants p "
                                "ON p.token = e.participant WHERE p.study_id = ?", (study_id,)).fetchone()
            answers = db.execute("SELECT count(*), max(a.created) FROM study_answers a JOIN participants p "
                                 "ON p.token = a.participant WHERE p.study_id = ?", (study_id,)).fetchone()
            progress = db.execute("SELECT number, conditions, progress FROM participants WHERE study_id = ? "
                                  "ORDER BY number", (study_id,)).fetchall()
        digest = hashlib.sha256(json.dumps(progress).encode()).hexdigest()[:16]
        return (*events, *answers, len(progress), digest)

    def answers(self, study_id: str) -> list[dict[str, Any]]:
        with self.store._read() as db:
            rows = db.execute("SELECT a.participant, p.number, a.step, a.instrument, a.answers, a.score, a.created "
                              "FROM study_answers a JOIN participants p ON p.token = a.participant "
                              "WHERE p.study_id = ? ORDER BY p.number, a.created", (study_id,)).fetchall()
        return [{"participant": t, "number": n, "step": s, "instrument": i, "answers": json.loads(a), "score": sc,
                 "created": c} for t, n, s, i, a, sc, c in rows]

    # ------------------------------------------------------------------ study workbenches (access)
    def study_workbench_ids(self) -> set[str]:
        """Every workbench that belongs to a study: marked ``study_participant`` in its settings
        (the participant page marks each one it makes), or recorded in a participant's progress
        (``workbenches``, and ``retired_workbenches`` a reset could not delete). These are
        reachable only through their participant's link and Study admin."""
        with self.store._read() as db:
            marked = db.execute("SELECT id FROM workbenches WHERE json_extract(settings, '$.' || ?) = 1",
                                (STUDY_MARK,)).fetchall()
            progress = db.execute("SELECT progress FROM participants").fetchall()
        ids = {i for (i,) in marked}
        for (text,) in progress:
            p = json.loads(text)
            ids.update(str(v) for v in (p.get("workbenches") or {}).values() if v)
            ids.update(str(v) for v in p.get("retired_workbenches") or [])
        return ids

    def missing_workbenches(self, token: str) -> dict[str, str]:
        """The participant's recorded workbenches that are no longer in the workspace, as
        slot ("practice" or a condition name) -> workbench id; empty when all are there.

        For the participant page: before opening the current condition's workbench, check
        ``slot in studies.missing_workbenches(token)`` (slot: "practice" for the practice round,
        else the condition's name) and show a message asking them to contact the researcher,
        who can reset or replace them in Study admin. :class:`StudyError` for a bad token."""
        p = self.participant(token)
        recorded = {k: str(v) for k, v in (p.progress.get("workbenches") or {}).items() if v}
        return {slot: wb_id for slot, wb_id in recorded.items() if self.store.get_workbench(wb_id) is None}

    def _workbenches_of(self, progress: dict[str, Any]) -> list[str]:
        ids = [str(v) for v in (progress.get("workbenches") or {}).values() if v]
        return ids + [str(v) for v in progress.get("retired_workbenches") or [] if str(v) not in ids]

    def _delete_workbenches(self, ids: list[str], delete_workbench: Callable[[str], None]) -> list[str]:
        """Delete each id with ``delete_workbench`` (a registry's delete); the ids it could not
        delete (a job still running, say). An id already gone counts as deleted."""
        kept = []
        for wb_id in ids:
            try:
                delete_workbench(wb_id)
            except KeyError:
                pass
            except (ValueError, OSError):
                kept.append(wb_id)
        return kept

    def reset_participant(self, token: str, delete_workbench: Callable[[str], None]) -> list[str]:
        """Start this participant again from the first step, with the same link: their progress,
        events and answers are removed (one transaction) and their workbenches deleted with
        ``delete_workbench`` (pass the server registry's ``delete``). Returns the workbench ids
        that could not be deleted yet (still training); they stay recorded as the study's, so
        nothing else can open them. :class:`StudyError` for a bad token."""
        p = self.participant(token)
        ids = self._workbenches_of(p.progress)
        with self.store._write() as db:
            db.execute("DELETE FROM study_events WHERE participant = ?", (token,))
            db.execute("DELETE FROM study_answers WHERE participant = ?", (token,))
            db.execute("UPDATE participants SET progress = ? WHERE token = ?",
                       (json.dumps({"retired_workbenches": ids} if ids else {}), token))
        kept = self._delete_workbenches(ids, delete_workbench)
        self._set_retired(token, kept)
        return kept

    def replace_participant(self, token: str, delete_workbench: Callable[[str], None]) -> tuple[str, list[str]]:
        """A new participant in this one's place: a new token with the same number and condition
        order, starting from the first step; the old token stops working at once and its events,
        answers and workbenches are removed. Returns (new token, workbench ids not deleted yet,
        as in :meth:`reset_participant`). :class:`StudyError` for a bad token."""
        p = self.participant(token)
        ids = self._workbenches_of(p.progress)
        new = secrets.token_urlsafe(16)
        with self.store._write() as db:
            created = db.execute("SELECT created FROM participants WHERE token = ?", (token,)).fetchone()[0]
            db.execute("DELETE FROM participants WHERE token = ?", (token,))  # its events and answers cascade
            db.execute("INSERT INTO participants (token, study_id, number, conditions, progress, created) "
                       "VALUES (?,?,?,?,?,?)", (new, p.study_id, p.number, json.dumps(p.conditions),
                                               json.dumps({"retired_workbenches": ids} if ids else {}), created))
        kept = self._delete_workbenches(ids, delete_workbench)
        self._set_retired(new, kept)
        return new, kept

    def _set_retired(self, token: str, kept: list[str]) -> None:
        with self.store._write() as db:
            row = db.execute("SELECT progress FROM participants WHERE token = ?", (token,)).fetchone()
            progress = json.loads(row[0])
            if kept:
                progress["retired_workbenches"] = kept
            else:
                progress.pop("retired_workbenches", None)
            db.execute("UPDATE participants SET progress = ? WHERE token = ?", (json.dumps(progress), token))
