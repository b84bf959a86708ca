"""The workspace folder: checkpoints (atomic writes) and one SQLite database holding
workbenches, model versions and annotations, so work survives a refresh or a restart.

Layout::

    <workspace>/steerboard.db
    <workspace>/workbenches/<id>/v<number>.pt
    <workspace>/base/<key>.pt          read-only base models shared by all workbenches
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

DEFAULT_WORKSPACE = "~/.steerboard"
_ID_RE = re.compile(r"^[0-9a-f]{12}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workbenches (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    data_source TEXT NOT NULL,
    arch TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    current_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS versions (
    workbench_id TEXT NOT NULL REFERENCES workbenches(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    parent INTEGER,
    created REAL NOT NULL,
    description TEXT NOT NULL,
    feedback TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    checkpoint TEXT NOT NULL,
    PRIMARY KEY (workbench_id, number)
);
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workbench_id TEXT NOT NULL REFERENCES workbenches(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    example_id INTEGER NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_by_kind ON annotations (workbench_id, kind);
"""


def resolve_workspace(path: str | os.PathLike | None = None) -> Path:
    """The workspace folder: ``path``, else $STEERBOARD_WORKSPACE, else ~/.steerboard."""
    raw = path or os.environ.get("STEERBOARD_WORKSPACE") or DEFAULT_WORKSPACE
    return Path(raw).expanduser().resolve()


def new_workbench_id() -> str:
    """A random 12-hex-digit id (safe in a URL and a folder name)."""
    return uuid.uuid4().hex[:12]


def valid_workbench_id(value: object) -> bool:
    """True when ``value`` has the shape of a workbench id (it may still be unknown)."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


@dataclass
class VersionRecord:
    """One model version of a workbench."""

    number: int
    parent: int | None
    created: float
    description: str
    checkpoint: str
    feedback: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkbenchRecord:
    id: str
    created: float
    updated: float
    data_source: str
    arch: str
    settings: dict[str, Any]
    current_version: int


@dataclass
class Annotation:
    """One piece of feedback a person gave: a kind, the example and a JSON payload."""

    id: int
    kind: str
    example_id: int
    payload: dict[str, Any]
    created: float


class Store:
    """Workspace folder + SQLite database. Safe to use from several threads: each call
    opens its own short-lived connection, and writes are serialised by a lock."""

    def __init__(self, workspace: str | os.PathLike | None = None) -> None:
        self.root = resolve_workspace(workspace)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "steerboard.db"
        self._write_lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            with db:  # commits on success, rolls back on error
                yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ paths
    def workbench_dir(self, wb_id: str) -> Path:
        if not valid_workbench_id(wb_id):
            raise ValueError(f"Not a workbench id: {wb_id!r}")
        return self.root / "workbenches" / wb_id

    def base_dir(self) -> Path:
        return self.root / "base"

    # ------------------------------------------------------------------ workbenches
    def create_workbench(self, data_source: str, arch: str, settings: dict[str, Any] | None = None, wb_id: str | None = None) -> WorkbenchRecord:
        wb_id = wb_id or new_workbench_id()
        now = time.time()
        with self._write_lock, self._connect() as db:
            db.execute(
                "INSERT INTO workbenches (id, created, updated, data_source, arch, settings) VALUES (?,?,?,?,?,?)",
                (wb_id, now, now, data_source, arch, json.dumps(settings or {})),
            )
        self.workbench_dir(wb_id).mkdir(parents=True, exist_ok=True)
        return WorkbenchRecord(wb_id, now, now, data_source, arch, settings or {}, 0)

    def get_workbench(self, wb_id: str) -> WorkbenchRecord | None:
        if not valid_workbench_id(wb_id):
            return None
        with self._connect() as db:
            row = db.execute(
                "SELECT id, created, updated, data_source, arch, settings, current_version FROM workbenches WHERE id=?",
                (wb_id,),
            ).fetchone()
        if row is None:
            return None
        return WorkbenchRecord(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])

    def update_workbench(self, wb_id: str, **fields: Any) -> None:
        allowed = {"data_source", "arch", "settings", "current_version"}
        if set(fields) - allowed:
            raise ValueError(f"Cannot update {sorted(set(fields) - allowed)}")
        values = {k: (json.dumps(v) if k == "settings" else v) for k, v in fields.items()}
        cols = ", ".join(f"{k}=?" for k in values)
        with self._write_lock, self._connect() as db:
            db.execute(f"UPDATE workbenches SET {cols}, updated=? WHERE id=?", (*values.values(), time.time(), wb_id))

    def list_workbenches(self) -> list[WorkbenchRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, created, updated, data_source, arch, settings, current_version FROM workbenches ORDER BY updated DESC"
            ).fetchall()
        return [WorkbenchRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]

    # ------------------------------------------------------------------ versions
    def add_version(self, wb_id: str, record: VersionRecord) -> None:
        """Record a version whose checkpoint is already on disk, and make it current."""
        with self._write_lock, self._connect() as db:
            db.execute(
                "INSERT INTO versions (workbench_id, number, parent, created, description, feedback, metrics, checkpoint)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (wb_id, record.number, record.parent, record.created, record.description,
                 json.dumps(record.feedback), json.dumps(record.metrics), record.checkpoint),
            )
            db.execute("UPDATE workbenches SET current_version=?, updated=? WHERE id=?", (record.number, time.time(), wb_id))

    def versions(self, wb_id: str) -> list[VersionRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT number, parent, created, description, checkpoint, feedback, metrics FROM versions"
                " WHERE workbench_id=? ORDER BY number",
                (wb_id,),
            ).fetchall()
        return [VersionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6])) for r in rows]

    def next_version_number(self, wb_id: str) -> int:
        with self._connect() as db:
            (n,) = db.execute("SELECT COALESCE(MAX(number) + 1, 0) FROM versions WHERE workbench_id=?", (wb_id,)).fetchone()
        return int(n)

    # ------------------------------------------------------------------ annotations
    def add_annotations(self, wb_id: str, kind: str, items: list[tuple[int, dict[str, Any]]]) -> list[int]:
        """Insert annotations (example id, payload) in one transaction; returns their ids."""
        now = time.time()
        ids = []
        with self._write_lock, self._connect() as db:
            for example_id, payload in items:
                cur = db.execute(
                    "INSERT INTO annotations (workbench_id, kind, example_id, payload, created) VALUES (?,?,?,?,?)",
                    (wb_id, kind, int(example_id), json.dumps(payload), now),
                )
                ids.append(int(cur.lastrowid))
        return ids

    def annotations(self, wb_id: str, kind: str | None = None) -> list[Annotation]:
        query = "SELECT id, kind, example_id, payload, created FROM annotations WHERE workbench_id=?"
        args: tuple = (wb_id,)
        if kind is not None:
            query += " AND kind=?"
            args += (kind,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [Annotation(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def delete_annotations(self, wb_id: str, ids: list[int] | None = None, kind: str | None = None) -> int:
        """Delete the given annotation ids, or all of ``kind`` when ``ids`` is None."""
        with self._write_lock, self._connect() as db:
            if ids is not None:
                cur = db.executemany("DELETE FROM annotations WHERE workbench_id=? AND id=?", [(wb_id, i) for i in ids])
            elif kind is not None:
                cur = db.execute("DELETE FROM annotations WHERE workbench_id=? AND kind=?", (wb_id, kind))
            else:
                raise ValueError("Give annotation ids or a kind to delete.")
            return cur.rowcount

    def replace_annotations(self, wb_id: str, kind: str, items: list[tuple[int, dict[str, Any]]]) -> None:
        """Make the annotations of ``kind`` exactly ``items``, atomically (for undo/redo)."""
        now = time.time()
        with self._write_lock, self._connect() as db:
            db.execute("DELETE FROM annotations WHERE workbench_id=? AND kind=?", (wb_id, kind))
            db.executemany(
                "INSERT INTO annotations (workbench_id, kind, example_id, payload, created) VALUES (?,?,?,?,?)",
                [(wb_id, kind, int(e), json.dumps(p), now) for e, p in items],
            )
