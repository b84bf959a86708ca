"""Store: atomic version allocation under concurrency, page state, jobs, schema migration from
the release before schema 1, and a workspace deleted under a running server."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from core.models import build_model, model_from_checkpoint, save_checkpoint
from core.session.store import SCHEMA_VERSION, Store, VersionRecord, WorkspaceError

ROOT = Path(__file__).resolve().parents[1]


def _base(store: Store) -> str:
    model = build_model("seed-cnn", 1, 16, 4, seed=0)
    path = store.root / "base.pt"
    save_checkpoint(model, path, ["a", "b", "c", "d"])
    rec = store.create_workbench("tiny", "seed-cnn", {}, base=VersionRecord(0, None, 0.0, "base", str(path)))
    return rec.id


def test_concurrent_commits_never_cross(workspace):
    """Four threads commit at once; every row must load the weights its own committer saved."""
    store = Store(workspace)
    wb_id = _base(store)
    barrier = threading.Barrier(4)
    made: dict[int, int] = {}  # committer -> version number
    errors = []

    def commit(who: int) -> None:
        model = build_model("seed-cnn", 1, 16, 4, seed=0)
        with torch.no_grad():
            model.fc3.bias.fill_(float(who))  # a fingerprint of this committer

        def write(path):
            barrier.wait()  # all four write their temporary files, then race for numbers
            save_checkpoint(model, path, ["a", "b", "c", "d"])

        try:
            rec = store.commit_version(wb_id, write, parent=0, description=f"by {who}", metrics={"who": who})
            made[who] = rec.number
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(made.values()) == [1, 2, 3, 4]
    rows = {v.number: v for v in store.versions(wb_id)}
    for who, number in made.items():
        row = rows[number]
        assert row.metrics["who"] == who and row.description == f"by {who}"
        weights = model_from_checkpoint(row.checkpoint).fc3.bias
        assert torch.all(weights == who), f"v{number} holds someone else's weights"
    assert not list(store.workbench_dir(wb_id).glob("pending-*")), "temporary files left behind"


@pytest.mark.slow
def test_commits_from_two_processes_never_cross(workspace):
    """Two processes (two servers on one workspace) commit at the same time."""
    store = Store(workspace)
    wb_id = _base(store)
    code = (
        "import sys, torch\n"
        "from core.models import build_model, save_checkpoint\n"
        "from core.session.store import Store\n"
        "who = int(sys.argv[1]); store = Store(sys.argv[2])\n"
        "for k in range(5):\n"
        "    m = build_model('seed-cnn', 1, 16, 4, seed=0)\n"
        "    with torch.no_grad(): m.fc3.bias.fill_(who * 100 + k)\n"
        "    store.commit_version(sys.argv[3], lambda p: save_checkpoint(m, p, list('abcd')), parent=0,"
        " description=f'{who}-{k}', metrics={'mark': who * 100 + k})\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(who), str(workspace), wb_id], cwd=root,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for who in (1, 2)]
    assert all(p.wait(120) == 0 for p in procs)
    rows = [v for v in store.versions(wb_id) if v.number > 0]
    assert sorted(v.number for v in rows) == list(range(1, 11))
    for v in rows:
        assert torch.all(model_from_checkpoint(v.checkpoint).fc3.bias == v.metrics["mark"])


def test_page_state_roundtrip_and_delete(workspace):
    store = Store(workspace)
    wb_id = _base(store)
    assert store.get_state(wb_id, "latent.result") is None
    store.put_state(wb_id, "latent.result", {"moved": [1, 2], "acc": 0.5})
    assert store.get_state(wb_id, "latent.result") == {"moved": [1, 2], "acc": 0.5}
    store.replace_annotations(wb_id, "latent", [(3, {"xy": [0, 1]})], state={"latent.history": {"undo": [[]]}})
    assert store.get_state(wb_id, "latent.history") == {"undo": [[]]}
    store.put_state(wb_id, "latent.result", None)
    assert store.get_state(wb_id, "latent.result", "gone") == "gone"


def test_workbench_and_version_0_are_created_together(workspace):
    """A failing version-0 insert leaves no workbench row behind (the orphan of issue 8)."""
    store = Store(workspace)
    wb_id = _base(store)
    with pytest.raises(sqlite3.IntegrityError):
        store.create_workbench("x", "seed-cnn", {}, wb_id=wb_id)  # same id: the whole transaction fails
    assert [w.id for w in store.list_workbenches()] == [wb_id]


def test_jobs_are_recorded_and_dead_ones_marked_interrupted(workspace):
    store = Store(workspace)
    wb_id = _base(store)
    mine = store.start_job(wb_id, "train", "trained 5 epochs", 100, status="running", base_version=0)
    store.update_job(mine, done_steps=40)
    # a job recorded by a server process that is gone (a finished child's pid is free)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)
    with sqlite3.connect(store.db_path) as db:
        cur = db.execute("INSERT INTO jobs (workbench_id, kind, description, status, started, updated, done_steps,"
                         " total_steps, base_version, host, pid, token) SELECT workbench_id, kind, 'old run', 'running',"
                         " started, updated, 17, 90, 3, host, ?, 'another-process' FROM jobs WHERE id=?", (dead_pid, mine))
        dead = cur.lastrowid
    interrupted = store.mark_interrupted()
    assert [j.id for j in interrupted] == [dead]
    notices = [j.interrupted_notice() for j in store.jobs(wb_id) if j.status == "interrupted"]
    assert notices == ['The job "old run" was interrupted at step 17 of 90 by a server restart; '
                       "nothing after version v3 was saved."]
    jobs = {j.id: j for j in store.jobs(wb_id)}
    assert jobs[mine].status == "running" and jobs[mine].done_steps == 40  # ours: alive, untouched
    store.end_job(mine, "diverged", done_steps=41, message="loss ran away")
    assert store.jobs(wb_id)[-1].status in ("diverged", "interrupted")
    assert {j.id: j.status for j in store.jobs(wb_id)}[mine] == "diverged"


# The schema of the release before schema 1 (commit b56d846), verbatim, and its JSON side files.
RELEASE_0_SCHEMA = """
CREATE TABLE IF NOT EXISTS workbenches (
    id TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL, data_source TEXT NOT NULL,
    arch TEXT NOT NULL, settings TEXT NOT NULL DEFAULT '{}', current_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS versions (
    workbench_id TEXT NOT NULL REFERENCES workbenches(id) ON DELETE CASCADE, number INTEGER NOT NULL,
    parent INTEGER, created REAL NOT NULL, description TEXT NOT NULL, feedback TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}', checkpoint TEXT NOT NULL, PRIMARY KEY (workbench_id, number));
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, workbench_id TEXT NOT NULL REFERENCES workbenches(id) ON DELETE CASCADE,
    kind TEXT NOT NULL, example_id INTEGER NOT NULL, payload TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS annotations_by_kind ON annotations (workbench_id, kind);
"""


def _release_0_workspace(root):
    """A workspace as the previous release wrote it: no user_version, JSON side files."""
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "steerboard.db")
    db.executescript(RELEASE_0_SCHEMA)
    for wb_id, settings in (("0123456789ab", {"device": "cpu", "frozen": ["conv1"]}), ("ba9876543210", {})):
        db.execute("INSERT INTO workbenches VALUES (?,?,?,?,?,?,?)", (wb_id, 1.0, 2.0, "digits", "seed-cnn",
                                                                      json.dumps(settings), 1))
        for n in (0, 1):
            db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?,?)",
                       (wb_id, n, n - 1 if n else None, 1.0 + n, f"v{n}", "{}", json.dumps({"test_acc": 0.9 + n / 100}),
                        str(root / "workbenches" / wb_id / f"v{n}.pt")))
        db.execute("INSERT INTO annotations (workbench_id, kind, example_id, payload, created) VALUES (?,?,?,?,?)",
                   (wb_id, "latent", 5, json.dumps({"source": [0, 0], "target": [1, 1]}), 3.0))
        (root / "workbenches" / wb_id).mkdir(parents=True)
    db.commit()
    db.close()
    first = root / "workbenches" / "0123456789ab"
    (first / "latent_result.json").write_text(json.dumps({"moved_fixed": 3, "moved_total": 4}))
    (first / "selection_retrain.json").write_text(json.dumps({"ids": [1, 2], "report": None}))
    (root / "workbenches" / "ba9876543210" / "latent_result.json").write_text('{"moved_fi')  # killed mid-write


def test_migration_from_the_previous_release_keeps_everything(tmp_path):
    root = tmp_path / "old"
    _release_0_workspace(root)
    store = Store(root)
    assert store.schema_version() == SCHEMA_VERSION == 2
    assert sorted(w.id for w in store.list_workbenches()) == ["0123456789ab", "ba9876543210"]
    assert store.get_workbench("0123456789ab").settings == {"device": "cpu", "frozen": ["conv1"]}
    assert [(v.number, v.metrics["test_acc"]) for v in store.versions("0123456789ab")] == [(0, 0.9), (1, 0.91)]
    assert [(a.example_id, a.payload) for a in store.annotations("0123456789ab")] == \
        [(5, {"source": [0, 0], "target": [1, 1]})]
    assert store.get_state("0123456789ab", "latent.result") == {"moved_fixed": 3, "moved_total": 4}
    assert store.get_state("0123456789ab", "monitor.retrain") == {"ids": [1, 2], "report": None}
    assert store.get_state("ba9876543210", "latent.result") is None  # unreadable: dropped, not fatal
    assert not list(root.glob("workbenches/*/*.json")), "side files should be gone after the migration"
    # a second open is a no-op; the next commit numbers on from the old rows
    again = Store(root)
    assert again.schema_version() == SCHEMA_VERSION and max(v.number for v in again.versions("0123456789ab")) + 1 == 2


def test_newer_schema_is_refused(tmp_path):
    store = Store(tmp_path / "ws")
    with sqlite3.connect(store.db_path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(WorkspaceError, match="newer steerboard"):
        Store(tmp_path / "ws")


def test_workspace_deleted_under_a_running_server_is_created_again(workspace):
    import shutil

    store = Store(workspace)
    wb_id = _base(store)
    shutil.rmtree(workspace)
    assert store.get_workbench(wb_id) is None
    assert store.generation == 1 and store.db_path.exists()
    assert store.list_workbenches() == []


# --------------------------------------------------------------------------- one server per workspace

HOLD = ("import sys, time; from core.session.store import claim_workspace; claim_workspace(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)")


def hold_claim(root) -> subprocess.Popen:
    """Another process that claims ``root`` and keeps it (a running server, for the lock)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_workspace_has_one_server_and_a_killed_one_leaves_no_stale_claim(tmp_path):
    from core.session.store import SERVER_LOCK, WorkspaceError, claim_workspace

    root = tmp_path / "workspace"
    holder = hold_claim(root)
    try:
        with pytest.raises(WorkspaceError, match=rf"in use by another steerboard server \(pid {holder.pid} on "):
            claim_workspace(root)
        assert (root / SERVER_LOCK).read_text().startswith(f"pid {holder.pid} ")  # the refusal left it as it was
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.wait()
    claim = claim_workspace(root)
    again = claim_workspace(root)  # the same process may claim again (the app's cache can be cleared)
    assert claim.holds() and again.holds()
    # (not read here: a process that closes any descriptor of its lock file loses the lock)
    probe = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(root)], cwd=ROOT,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and f"in use by another steerboard server (pid {os.getpid()} on " in probe.stderr
    claim.release()
    assert not claim.holds()


def test_a_claim_ends_with_its_workspace_folder(tmp_path):
    import shutil

    from core.session.store import claim_workspace

    root = tmp_path / "workspace"
    claim = claim_workspace(root)
    shutil.rmtree(root)
    assert not claim.holds()  # the app claims the new folder's lock file instead of trusting this one
    root.mkdir()
    assert not claim.holds()
    assert claim_workspace(root).holds()
