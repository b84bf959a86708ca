"""The workspace folder: checkpoints (atomic writes) and one SQLite database holding
workbenches, model versions, annotations, jobs and what the pages persist (and the user-study
tables, see ``core/study/store.py``), so work survives a refresh, a second tab or a restart.

Layout::

    <workspace>/steerboard.db
    <workspace>/workbenches/<id>/v<number>.pt
    <workspace>/base/<key>.pt          read-only base models shared by all workbenches

The schema is versioned with ``PRAGMA user_version``; opening an older workspace migrates it
in one transaction (see :data:`MIGRATIONS`). One server process per workspace is the supported
setup (SQLite allows one writer, and a server's live workbenches and jobs are in its memory):
the app's server claims its workspace with :func:`claim_workspace`. Other processes (the CLI,
benchmarks, notebooks) may read and write it beside the server, each write being a short
transaction.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from core.study.schema import STUDY_SCHEMA

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "~/.steerboard"
SCHEMA_VERSION = 2
_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# Identifies this server process in the jobs it records, so a restart can tell its own
# running jobs from those a dead process left behind.
PROCESS_TOKEN = uuid.uuid4().hex
HOST = socket.gethostname()
ACTIVE_JOB_STATES = ("queued", "running", "paused")

_SCHEMA_V0 = """
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

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workbench_id TEXT NOT NULL REFERENCES workbenches(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    updated REAL NOT NULL,
    ended REAL,
    done_steps INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    base_version INTEGER,
    result_version INTEGER,
    message TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    token TEXT NOT NULL,
    notified INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_workbench ON jobs (workbench_id, status);
CREATE TABLE IF NOT EXISTS page_state (
    workbench_id TEXT NOT NULL REFERENCES workbenches(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (workbench_id, key)
);
"""

def _run_script(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_1_to_2(db: sqlite3.Connection, _root: Path) -> list[Path]:
    """Add the user-study tables."""
    _run_script(db, STUDY_SCHEMA)
    return []


# JSON side files the release before schema 1 wrote next to the checkpoints, and the
# page-state key each one becomes.
LEGACY_SIDE_FILES = {"latent_result.json": "latent.result", "selection_retrain.json": "monitor.retrain"}


def _migrate_0_to_1(db: sqlite3.Connection, root: Path) -> list[Path]:
    """Add the jobs and page_state tables and move the JSON side files into page_state.
    Returns the side files to delete once the transaction has committed."""
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)
    imported: list[Path] = []
    for (wb_id,) in db.execute("SELECT id FROM workbenches").fetchall():
        for name, key in LEGACY_SIDE_FILES.items():
            path = root / "workbenches" / wb_id / name
            if not path.is_file():
                continue
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # half-written by a kill: nothing to keep
                log.warning("migration: skipped unreadable %s (%s)", path, exc)
                imported.append(path)
                continue
            db.execute("INSERT OR REPLACE INTO page_state (workbench_id, key, value, updated) VALUES (?,?,?,?)",
                       (wb_id, key, json.dumps(value), path.stat().st_mtime))
            imported.append(path)
    return imported


#: from-version -> migration(db, workspace root) -> files to delete after commit
MIGRATIONS: dict[int, Callable[[sqlite3.Connection, Path], list[Path]]] = {0: _migrate_0_to_1, 1: _migrate_1_to_2}


class WorkspaceError(RuntimeError):
    """The workspace cannot be used (written by a newer release, unreadable database)."""


def resolve_workspace(path: str | os.PathLike | None = None) -> Path:
    """The workspace folder: ``path``, else $STEERBOARD_WORKSPACE, else ~/.steerboard."""
    raw = path or os.environ.get("STEERBOARD_WORKSPACE") or DEFAULT_WORKSPACE
    return Path(raw).expanduser().resolve()


SERVER_LOCK = "server.lock"


@dataclass
class ServerClaim:
    """This process's claim to be the one server of a workspace (see :func:`claim_workspace`).

    The claim is a POSIX record lock on ``<workspace>/server.lock``: the kernel drops it when
    the process ends in any way (SIGKILL included), so a crashed server leaves no stale lock.
    The lock is held on a raw descriptor that garbage collection never closes (a POSIX lock
    is dropped when the process closes *any* descriptor of the file), so a claim lasts until
    :meth:`release` or the end of the process. For the same reason nothing in the server's
    process may open ``server.lock`` (other processes may read it)."""

    path: Path
    fd: int | None = None

    def holds(self) -> bool:
        """True while the claim's file is still the workspace's lock file (not released, not
        deleted with its workspace and made again)."""
        if self.fd is None:
            return False
        try:
            return os.fstat(self.fd).st_ino == self.path.stat().st_ino
        except OSError:
            return False

    def release(self) -> None:
        """Give the workspace up (this process's every claim on it ends)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def claim_workspace(root: str | os.PathLike) -> ServerClaim:
    """Claim ``root`` for this server process, or raise :class:`WorkspaceError` naming the
    server that holds it.

    SQLite allows one writer, and a server keeps its live workbenches, job runners and queue
    in memory, so two servers on one workspace would each run jobs for the same workbench.
    Several replicas of the app therefore each need their own workspace. A second claim by
    the same process succeeds (POSIX locks belong to the process). On platforms without
    ``fcntl`` (Windows) nothing is checked."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / SERVER_LOCK
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; one server per workspace is on the user
        return ServerClaim(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise WorkspaceError(
            f"the workspace {root} is in use by another steerboard server ({holder}). One server "
            "process per workspace: give each replica its own STEERBOARD_WORKSPACE, or stop the "
            "other server first.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {HOST}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    return ServerClaim(path, fd)


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


@dataclass
class JobRecord:
    """A job as the store remembers it (what survives the process that ran it)."""

    id: int
    workbench_id: str
    kind: str
    description: str
    status: str
    started: float
    updated: float
    ended: float | None
    done_steps: int
    total_steps: int
    base_version: int | None
    result_version: int | None
    message: str
    notified: bool

    def interrupted_notice(self) -> str:
        """The one-line notice shown after a restart for a job that was cut off."""
        saved = f"v{self.base_version}" if self.base_version is not None else "the version it started from"
        return (f"The job \"{self.description}\" was interrupted at step {self.done_steps} of {self.total_steps} "
                f"by a server restart; nothing after version {saved} was saved.")


_JOB_COLUMNS = ("id, workbench_id, kind, description, status, started, updated, ended, done_steps, total_steps, "
                "base_version, result_version, message, notified")


def _job(row: tuple) -> JobRecord:
    return JobRecord(*row[:13], bool(row[13]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Store:
    """Workspace folder + SQLite database. Safe to use from several threads: each call
    opens its own short-lived connection, and every write is one transaction begun with
    ``BEGIN IMMEDIATE`` (so two writers, in this process or another, never interleave)."""

    def __init__(self, workspace: str | os.PathLike | None = None) -> None:
        self.root = resolve_workspace(workspace)
        self.server_claim: ServerClaim | None = None  # set by the app's server (claim_workspace)
        self.db_path = self.root / "steerboard.db"
        self._write_lock = threading.Lock()
        self._init_lock = threading.Lock()
        # a workbench folder's writers (version commits, any number at once) against its deletion
        self._folders = threading.Condition()
        self._folder_writers: dict[str, int] = {}
        self._deleted: set[str] = set()  # tombstones: workbenches deleted (or being deleted) through this store
        #: bumped whenever the workspace had to be created again (deleted under a running server)
        self.generation = 0
        self._ensure()

    # ------------------------------------------------------------------ database
    def _ensure(self) -> None:
        """Create or migrate the database. Called at start and again if the folder vanished."""
        with self._init_lock:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("BEGIN IMMEDIATE")
                try:
                    version = int(db.execute("PRAGMA user_version").fetchone()[0])
                    if version > SCHEMA_VERSION:
                        raise WorkspaceError(
                            f"{self.db_path} was written by a newer steerboard (schema {version}, this release "
                            f"reads up to {SCHEMA_VERSION}); upgrade steerboard or use another workspace.")
                    fresh = db.execute("SELECT count(*) FROM sqlite_master WHERE name='workbenches'").fetchone()[0] == 0
                    to_delete: list[Path] = []
                    for statement in _SCHEMA_V0.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    if fresh:
                        _run_script(db, _SCHEMA_V1)
                        _run_script(db, STUDY_SCHEMA)
                    else:
                        while version < SCHEMA_VERSION:
                            to_delete += MIGRATIONS[version](db, self.root)
                            version += 1
                            log.info("migrated %s to schema %d", self.db_path, version)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise WorkspaceError(f"{self.db_path} is not a readable steerboard database ({exc}).") from exc
            finally:
                db.close()
        for path in to_delete:  # only once the rows are committed
            path.unlink(missing_ok=True)

    def check_present(self) -> None:
        """Create the workspace again if its folder was deleted under a running server (every
        workbench in it is gone; ``generation`` tells live objects to forget theirs)."""
        if not self.db_path.exists():
            log.warning("workspace %s disappeared under a running server; creating it again", self.root)
            self._ensure()
            self.generation += 1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        self.check_present()
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        self.check_present()
        with self._write_lock:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA foreign_keys = ON")
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            finally:
                db.close()

    def schema_version(self) -> int:
        with self._read() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ paths
    def workbench_dir(self, wb_id: str) -> Path:
        if not valid_workbench_id(wb_id):
            raise ValueError(f"Not a workbench id: {wb_id!r}")
        return self.root / "workbenches" / wb_id

    @contextmanager
    def _writing_into(self, wb_id: str) -> Iterator[Path]:
        """Workbench ``wb_id``'s folder (made if missing), for writes that end before the block
        does. Writers run side by side; :meth:`delete_workbench` waits for them and then
        refuses new ones: ``KeyError`` for a deleted (or unknown) workbench, whose folder is
        not made again."""
        with self._folders:
            if wb_id in self._deleted or self.get_workbench(wb_id) is None:
                raise KeyError(f"Workbench {wb_id} was deleted; nothing more is saved into it.")
            self._folder_writers[wb_id] = self._folder_writers.get(wb_id, 0) + 1
        try:
            folder = self.workbench_dir(wb_id)
            folder.mkdir(parents=True, exist_ok=True)
            yield folder
        finally:
            with self._folders:
                self._folder_writers[wb_id] -= 1
                if not self._folder_writers[wb_id]:
                    del self._folder_writers[wb_id]
                self._folders.notify_all()

    def base_dir(self) -> Path:
        return self.root / "base"

    # ------------------------------------------------------------------ workbenches
    def create_workbench(self, data_source: str, arch: str, settings: dict[str, Any] | None = None,
                         wb_id: str | None = None, *, base: VersionRecord | None = None) -> WorkbenchRecord:
        """A new workbench row; with ``base``, its version 0 is added in the same transaction,
        so no workbench ever exists without a version."""
        wb_id = wb_id or new_workbench_id()
        now = time.time()
        self.workbench_dir(wb_id).mkdir(parents=True, exist_ok=True)
        with self._write() as db:
            db.execute(
                "INSERT INTO workbenches (id, created, updated, data_source, arch, settings, current_version)"
                " VALUES (?,?,?,?,?,?,?)",
                (wb_id, now, now, data_source, arch, json.dumps(settings or {}), base.number if base else 0),
            )
            if base is not None:
                self._insert_version(db, wb_id, base)
        return WorkbenchRecord(wb_id, now, now, data_source, arch, settings or {}, base.number if base else 0)

    def get_workbench(self, wb_id: str) -> WorkbenchRecord | None:
        if not valid_workbench_id(wb_id):
            return None
        with self._read() as db:
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
        with self._write() as db:
            db.execute(f"UPDATE workbenches SET {cols}, updated=? WHERE id=?", (*values.values(), time.time(), wb_id))

    def list_workbenches(self) -> list[WorkbenchRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT id, created, updated, data_source, arch, settings, current_version FROM workbenches ORDER BY updated DESC"
            ).fetchall()
        return [WorkbenchRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]

    def delete_workbench(self, wb_id: str, *, files: bool = False) -> None:
        """Remove a workbench's rows (versions, annotations, jobs, page state cascade), and
        with ``files`` its folder of checkpoints too (after the rows are gone: a crash in
        between leaves files nobody lists, never a row pointing at missing files)."""
        with self._folders:  # a tombstone first: no new commit starts; then wait for those under way
            self._deleted.add(wb_id)
            while self._folder_writers.get(wb_id):
                self._folders.wait()
        try:
            with self._write() as db:
                db.execute("DELETE FROM workbenches WHERE id=?", (wb_id,))
        except BaseException:
            with self._folders:  # the rows are still there: the workbench goes on
                self._deleted.discard(wb_id)
            raise
        if files and valid_workbench_id(wb_id):
            folder = self.workbench_dir(wb_id)
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)

    def workbench_summaries(self) -> list[dict[str, Any]]:
        """Every workbench, most recently changed first: ``id``, ``name``, ``note``,
        ``data_source``, ``arch``, ``versions`` (count), ``current_version``, ``created`` and
        ``updated`` (the later of the row's change and its newest version)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT w.id, w.created, w.updated, w.data_source, w.arch, w.settings, w.current_version, "
                "COUNT(v.number), MAX(v.created) FROM workbenches w LEFT JOIN versions v ON v.workbench_id = w.id "
                "GROUP BY w.id").fetchall()
        out = []
        for r in rows:
            settings = json.loads(r[5])
            out.append({"id": r[0], "name": str(settings.get("name", "")), "note": str(settings.get("note", "")),
                        "data_source": r[3], "arch": r[4], "versions": int(r[7]), "current_version": int(r[6]),
                        "created": float(r[1]), "updated": max(float(r[2]), float(r[8] or 0.0))})
        return sorted(out, key=lambda x: -x["updated"])

    # ------------------------------------------------------------------ versions
    @staticmethod
    def _insert_version(db: sqlite3.Connection, wb_id: str, record: VersionRecord) -> None:
        db.execute(
            "INSERT INTO versions (workbench_id, number, parent, created, description, feedback, metrics, checkpoint)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (wb_id, record.number, record.parent, record.created, record.description,
             json.dumps(record.feedback), json.dumps(record.metrics), record.checkpoint),
        )

    def commit_version(self, wb_id: str, write_checkpoint: Callable[[Path], None], *, parent: int | None,
                       description: str, feedback: dict[str, Any] | None = None,
                       metrics: dict[str, Any] | None = None) -> VersionRecord:
        """Allocate the next version number, put its checkpoint in place and add its row, in
        one transaction, and make it current.

        ``write_checkpoint(path)`` writes the weights to a uniquely named temporary file first
        (outside the database lock: it may be slow); inside the transaction the file is renamed to
        ``v<number>.pt`` and the row inserted. Two committers can never get the same number or
        each other's file. A crash before the commit leaves at most an orphan file that the
        next commit of that number replaces.

        A workbench that was deleted (or never existed) gets nothing: ``KeyError``, and its
        folder is not made again; :meth:`delete_workbench` waits for commits under way, so a
        job that ends while its workbench is being deleted never leaves a folder behind.
        """
        with self._writing_into(wb_id) as folder:
            pending = folder / f"pending-{uuid.uuid4().hex}.pt"
            try:
                write_checkpoint(pending)
                with self._write() as db:
                    (number,) = db.execute("SELECT COALESCE(MAX(number) + 1, 0) FROM versions WHERE workbench_id=?",
                                           (wb_id,)).fetchone()
                    final = folder / f"v{int(number)}.pt"
                    os.replace(pending, final)
                    record = VersionRecord(int(number), parent, time.time(), description, str(final),
                                           dict(feedback or {}), dict(metrics or {}))
                    self._insert_version(db, wb_id, record)
                    db.execute("UPDATE workbenches SET current_version=?, updated=? WHERE id=?",
                               (record.number, time.time(), wb_id))
            finally:
                pending.unlink(missing_ok=True)
        return record

    def versions(self, wb_id: str) -> list[VersionRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT number, parent, created, description, checkpoint, feedback, metrics FROM versions"
                " WHERE workbench_id=? ORDER BY number",
                (wb_id,),
            ).fetchall()
        return [VersionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6])) for r in rows]

    # ------------------------------------------------------------------ annotations
    def add_annotations(self, wb_id: str, kind: str, items: list[tuple[int, dict[str, Any]]]) -> list[int]:
        """Insert annotations (example id, payload) in one transaction; returns their ids."""
        now = time.time()
        ids = []
        with self._write() as db:
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
        with self._read() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [Annotation(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def delete_annotations(self, wb_id: str, ids: list[int] | None = None, kind: str | None = None) -> int:
        """Delete the given annotation ids, or all of ``kind`` when ``ids`` is None."""
        with self._write() as db:
            if ids is not None:
                cur = db.executemany("DELETE FROM annotations WHERE workbench_id=? AND id=?", [(wb_id, i) for i in ids])
            elif kind is not None:
                cur = db.execute("DELETE FROM annotations WHERE workbench_id=? AND kind=?", (wb_id, kind))
            else:
                raise ValueError("Give annotation ids or a kind to delete.")
            return cur.rowcount

    def replace_annotations(self, wb_id: str, kind: str, items: list[tuple[int, dict[str, Any]]],
                            state: dict[str, Any] | None = None) -> None:
        """Make the annotations of ``kind`` exactly ``items``, atomically (for undo/redo);
        ``state`` (page-state key -> value) is written in the same transaction."""
        now = time.time()
        with self._write() as db:
            db.execute("DELETE FROM annotations WHERE workbench_id=? AND kind=?", (wb_id, kind))
            db.executemany(
                "INSERT INTO annotations (workbench_id, kind, example_id, payload, created) VALUES (?,?,?,?,?)",
                [(wb_id, kind, int(e), json.dumps(p), now) for e, p in items],
            )
            for key, value in (state or {}).items():
                self._put_state(db, wb_id, key, value, now)

    # ------------------------------------------------------------------ page state
    @staticmethod
    def _put_state(db: sqlite3.Connection, wb_id: str, key: str, value: Any, now: float) -> None:
        if value is None:
            db.execute("DELETE FROM page_state WHERE workbench_id=? AND key=?", (wb_id, key))
        else:
            db.execute("INSERT OR REPLACE INTO page_state (workbench_id, key, value, updated) VALUES (?,?,?,?)",
                       (wb_id, key, json.dumps(value), now))

    def put_state(self, wb_id: str, key: str, value: Any) -> None:
        """Save a JSON-able value a page keeps for a workbench (None deletes it)."""
        with self._write() as db:
            self._put_state(db, wb_id, key, value, time.time())

    def all_state(self, wb_id: str) -> dict[str, Any]:
        """Every page-state key of a workbench with its value (for exports)."""
        with self._read() as db:
            rows = db.execute("SELECT key, value FROM page_state WHERE workbench_id=? ORDER BY key", (wb_id,)).fetchall()
        out = {}
        for key, value in rows:
            try:
                out[key] = json.loads(value)
            except ValueError:  # written by a newer release in another form: export it as text
                out[key] = value
        return out

    def get_state(self, wb_id: str, key: str, default: Any = None) -> Any:
        with self._read() as db:
            row = db.execute("SELECT value FROM page_state WHERE workbench_id=? AND key=?", (wb_id, key)).fetchone()
        return default if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ jobs
    def start_job(self, wb_id: str, kind: str, description: str, total_steps: int, *, status: str = "queued",
                  base_version: int | None = None) -> int:
        """Record a job that is starting (or queued); returns its id."""
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO jobs (workbench_id, kind, description, status, started, updated, total_steps, base_version,"
                " host, pid, token) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (wb_id, kind, description, status, now, now, int(total_steps), base_version, HOST, os.getpid(),
                 PROCESS_TOKEN),
            )
            return int(cur.lastrowid)

    def update_job(self, job_id: int, *, status: str | None = None, done_steps: int | None = None,
                   message: str | None = None) -> None:
        """Progress of a running job (called every few seconds, not every step)."""
        sets, args = ["updated=?"], [time.time()]
        for col, value in (("status", status), ("done_steps", done_steps), ("message", message)):
            if value is not None:
                sets.append(f"{col}=?")
                args.append(value)
        with self._write() as db:
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*args, job_id))

    def end_job(self, job_id: int, status: str, *, done_steps: int, message: str = "",
                result_version: int | None = None) -> None:
        """Record how a job ended: done, stopped, failed or diverged."""
        now = time.time()
        with self._write() as db:
            db.execute("UPDATE jobs SET status=?, done_steps=?, message=?, result_version=?, ended=?, updated=?,"
                       " notified=1 WHERE id=?", (status, int(done_steps), message, result_version, now, now, job_id))

    def jobs(self, wb_id: str, limit: int = 50) -> list[JobRecord]:
        with self._read() as db:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE workbench_id=? ORDER BY id DESC LIMIT ?",
                              (wb_id, limit)).fetchall()
        return [_job(r) for r in rows]

    def mark_interrupted(self) -> list[JobRecord]:
        """Jobs recorded as queued or running by a process that is gone (a killed or
        restarted server on this machine) become ``interrupted``; returns them.

        Jobs of this process, or of another live process on this machine, are left alone;
        so are jobs recorded on another host (one server per workspace is the supported setup).
        """
        with self._read() as db:
            rows = db.execute("SELECT id, host, pid, token FROM jobs WHERE status IN ('queued', 'running', 'paused')"
                              ).fetchall()
        dead = [r[0] for r in rows if r[3] != PROCESS_TOKEN and r[1] == HOST and (r[2] == os.getpid() or not _pid_alive(r[2]))]
        if not dead:
            return []
        now = time.time()
        with self._write() as db:
            db.executemany("UPDATE jobs SET status='interrupted', ended=?, updated=?, message=? WHERE id=? AND status IN"
                           " ('queued', 'running', 'paused')", [(now, now, "server restart", i) for i in dead])
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({','.join('?' * len(dead))})", dead).fetchall()
        return [_job(r) for r in rows]

