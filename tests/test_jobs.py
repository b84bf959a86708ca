"""Jobs: honest final states, the compute budget's queue, bounded step history, snapshots."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from core.engine import StepInfo
from core.jobs import ComputeBudget, Job, JobBusy, JobRunner, StepHistory


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_step_history_is_bounded_and_readers_get_only_new_points():
    h = StepHistory(limit=8)
    cursor, items, reset = h.since(None)
    assert items == [] and reset
    for i in range(6):
        h.append((i,))
    cursor, items, reset = h.since(cursor)
    assert [x[0] for x in items] == list(range(6)) and not reset
    h.append((6,))
    cursor, items, reset = h.since(cursor)
    assert items == [(6,)] and not reset
    for i in range(7, 1000):
        h.append((i,))
    assert len(h) <= 8
    kept = [x[0] for x in h.items()]
    assert kept[0] == 0 and kept == sorted(kept) and kept[-1] >= 1000 - h.stride
    cursor2, items, reset = h.since(cursor)  # thinned since the last read: the reader starts over
    assert reset and [x[0] for x in items] == kept


@pytest.mark.parametrize("declared", ["diverged", "stopped", "done"])
def test_a_declared_state_is_never_overwritten(declared):
    """The bug of issue 8: a run marked failed/diverged was later set to done."""
    job = Job("train", 10)

    def work(job):
        job.declare(declared, f"ended as {declared}")
        return None

    JobRunner().start(job, work)
    assert job.wait(10)
    assert job.status == declared and job.message == f"ended as {declared}"


def test_states_done_stopped_failed():
    ok = JobRunner().start(Job("a", 1), lambda job: 42)
    assert ok.wait(10) and ok.status == "done" and ok.result == 42
    stopped_job = Job("b", 1)

    def until_stopped(job):
        while not job.control.stop_requested:
            time.sleep(0.01)

    runner = JobRunner()
    runner.start(stopped_job, until_stopped)
    with pytest.raises(JobBusy):
        runner.start(Job("c", 1), lambda job: None)
    stopped_job.stop()
    assert stopped_job.wait(10) and stopped_job.status == "stopped"

    def boom(job):
        raise ValueError("bad annotation")

    failed = JobRunner().start(Job("d", 1), boom)
    assert failed.wait(10) and failed.status == "failed" and "bad annotation" in failed.error


def test_budget_queues_beyond_its_limit_and_a_queued_job_can_be_cancelled():
    budget = ComputeBudget(max_jobs=1)
    release = threading.Event()
    ran = []

    def hold(job):
        ran.append(job.kind)
        release.wait(10)

    first = JobRunner(budget).start(Job("first", 1), hold)
    _wait(lambda: first.status == "running")
    second = JobRunner(budget).start(Job("second", 1), hold)
    third = JobRunner(budget).start(Job("third", 1), hold)
    _wait(lambda: third.queue_position == 2)
    assert second.status == "queued" and second.queue_position == 1
    assert second.view()["status"] == "queued" and second.running
    second.stop()  # cancel while waiting: it never runs
    assert second.wait(10) and second.status == "stopped" and "queue" in second.message
    _wait(lambda: third.queue_position == 1)
    release.set()
    assert first.wait(10) and third.wait(10)
    assert ran == ["first", "third"]
    assert budget.snapshot() == {"running": 0, "queued": 0, "max_jobs": 1}


def test_weights_are_snapshots_taken_in_the_training_thread():
    model = torch.nn.Linear(2, 2)
    job = Job("train", 10)
    job.publish_weights_of(model)
    assert job.weights() is None  # the first read asks for one
    with torch.no_grad():
        model.weight.fill_(1.0)
    job.on_step(StepInfo(epoch=0, step=0, loss=1.0, accuracy=0.5, lr=0.1, step_time=0.0))
    step, state = job.weights()
    assert step == 0 and torch.all(state["weight"] == 1.0)
    with torch.no_grad():
        model.weight.fill_(2.0)  # the training copy moves on; the snapshot does not
    assert torch.all(state["weight"] == 1.0)


class _Recorder:
    def __init__(self):
        self.calls = []

    def started(self, job):
        self.calls.append(("started", job.status))

    def progress(self, job):
        self.calls.append(("progress", job.status))

    def ended(self, job):
        self.calls.append(("ended", job.status))


def test_recorder_hears_start_and_end_with_the_final_state():
    rec = _Recorder()

    def work(job):
        job.declare("diverged", "loss ran away")

    job = JobRunner().start(Job("train", 5), work, recorder=rec)
    assert job.wait(10)
    assert rec.calls[0] == ("started", "queued")
    assert rec.calls[-1] == ("ended", "diverged")
