"""What a workbench tells every tab about its jobs (issue 29): a restore forgets the job that
ended (its banner was about another version); an interrupted job's notice lives in the store
until it is dismissed or a new job runs, for every session that opens the workbench."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

from core.engine import TrainConfig
from core.session.jobs import Job, JobRunner
from core.models import build_model
from core.session.store import HOST, Store
from core.session.workbench import Workbench
from core.session.runs import JobOptions


def _make(store, data):
    return Workbench.create(store, data, "tiny", build_model("seed-cnn", 1, 16, data.num_classes, seed=0))


def _loader(data):
    return lambda source, seed=0: data


def test_dismiss_ended_forgets_only_a_job_that_has_ended():
    runner = JobRunner()
    assert runner.dismiss_ended() is None
    gate = threading.Event()
    job = runner.start(Job("train", 1), lambda j: gate.wait(30))
    assert runner.dismiss_ended() is None and runner.current is job  # still running: kept
    gate.set()
    assert job.wait(30)
    assert runner.dismiss_ended() is job and runner.current is None


def test_restore_forgets_the_finished_job_whose_banner_named_another_version(workspace, tiny_data):
    wb = _make(Store(workspace), tiny_data)
    job = wb.train(TrainConfig(epochs=1, batch_size=16), JobOptions("train"))
    assert job.wait(60) and job.status == "done" and wb.current_version == 1
    assert wb.jobs.current is job  # "Finished: version v1" while v1 is current
    assert wb.restore(0) is job
    assert wb.jobs.current is None and wb.current_version == 0


def _dead_job(store: Store, wb_id: str, description: str = "old run") -> int:
    """A job recorded as running by a server process that is gone (a finished child's pid)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sqlite3.connect(store.db_path) as db:
        cur = db.execute("INSERT INTO jobs (workbench_id, kind, description, status, started, updated, done_steps,"
                         " total_steps, base_version, host, pid, token) VALUES (?, 'train', ?, 'running', 1, 1, 17,"
                         " 90, 0, ?, ?, 'another-process')",
                         (wb_id, description, HOST, int(child.stdout)))
        return int(cur.lastrowid)


def test_the_interrupted_notice_stays_for_every_session_until_dismissed(workspace, tiny_data):
    store = Store(workspace)
    wb = _make(store, tiny_data)
    _dead_job(store, wb.id)
    text = ('The job "old run" was interrupted at step 17 of 90 by a server restart; nothing after version v0 '
            "was saved.")
    assert wb.interrupted_notice() == text
    assert wb.interrupted_notice() == text  # asking again (another rerun, another tab) still says it
    again = Workbench.open(Store(workspace), wb.id, loader=_loader(tiny_data))  # another server process's view
    assert again.interrupted_notice() == text
    again.dismiss_interrupted()
    assert again.interrupted_notice() is None and wb.interrupted_notice() is None  # on disk: gone for all


def test_a_new_job_ends_the_interrupted_notice(workspace, tiny_data):
    store = Store(workspace)
    wb = _make(store, tiny_data)
    _dead_job(store, wb.id)
    assert wb.interrupted_notice() is not None
    job = wb.train(TrainConfig(epochs=1, batch_size=16), JobOptions("train"))
    assert wb.interrupted_notice() is None  # a new job runs: the old notice is history
    assert job.wait(60)
    assert wb.interrupted_notice() is None
