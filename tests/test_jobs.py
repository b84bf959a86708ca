"""Jobs: honest final states, the compute budget's queue, bounded step history, snapshots."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from core.engine import EpochInfo, StepInfo
from core.session.jobs import ComputeBudget, Job, JobBusy, JobRunner, StepHistory


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
    assert job.weights() is None
    job.on_step(StepInfo(epoch=0, step=0, loss=1.0, accuracy=0.5, lr=0.1, step_time=0.0))
    assert job.weights() is None  # reading asks for nothing: no snapshot was taken at that step
    job.request_weights()
    with torch.no_grad():
        model.weight.fill_(1.0)
    job.on_step(StepInfo(epoch=0, step=1, loss=1.0, accuracy=0.5, lr=0.1, step_time=0.0))
    step, state = job.weights()
    assert step == 1 and torch.all(state["weight"] == 1.0)
    job.on_step(StepInfo(epoch=0, step=2, loss=1.0, accuracy=0.5, lr=0.1, step_time=0.0))
    assert job.weights()[0] == 1  # one request, one snapshot
    with torch.no_grad():
        model.weight.fill_(2.0)  # the training copy moves on; the snapshot does not
    assert torch.all(state["weight"] == 1.0)


def test_weight_snapshots_stay_whole_and_fixed_while_readers_and_training_contend():
    """Several page threads ask for weights while the training thread updates them, all let go
    at once by a barrier. Every snapshot a reader gets is whole (each tensor holds the value of
    one and the same step: never half an update) and stays as it was handed out while
    training moves on; a reader's steps never go back; a request is answered by the next
    step's snapshot; the last epoch's weights are what readers see at the end."""
    readers, steps, max_reads = 6, 200, 3000
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(6)])
    job = Job("train", steps)
    job.publish_weights_of(model)
    barrier = threading.Barrier(readers + 1)
    current = {"step": -1}  # the step whose update the training thread has finished writing
    got: list[list[tuple[int, dict, int]]] = [[] for _ in range(readers)]  # (step, state, current when asked)
    errors: list[BaseException] = []

    def train():
        try:
            barrier.wait(10)
            for step in range(steps):
                with torch.no_grad():
                    for p in model.parameters():  # one tensor at a time: a copy taken meanwhile would tear
                        p.fill_(float(step))
                        time.sleep(0)
                current["step"] = step
                job.on_step(StepInfo(epoch=0, step=step, loss=1.0, accuracy=0.5, lr=0.1, step_time=0.0))
            job.on_epoch(EpochInfo(epoch=0, train_loss=1.0, train_acc=0.5, val_loss=None, val_acc=None,
                                   epoch_time=0.0, lr=0.1, steps=steps))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read(k):
        try:
            barrier.wait(10)
            while current["step"] < steps - 1 and len(got[k]) < max_reads:
                asked_at = current["step"]
                job.request_weights()
                snap = job.weights()
                if snap is not None:
                    got[k].append((snap[0], snap[1], asked_at))
                time.sleep(0.0002)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=train)] + [threading.Thread(target=read, args=(k,)) for k in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    checked = set()
    for seen in got:
        for step, state, _ in seen:
            if id(state) not in checked:
                checked.add(id(state))
                assert all(torch.all(v == float(step)) for v in state.values()), f"a torn or moved snapshot, step {step}"
        assert [s for s, _, _ in seen] == sorted(s for s, _, _ in seen)  # never back to an older step
        # asked while step a was the latest: once step a + 1 is over, the snapshot is of step a or later
        i = 0
        for step, _, asked_at in seen:
            while i + 1 < len(seen) and seen[i + 1][2] <= asked_at - 2:
                i += 1
            if seen[i][2] <= asked_at - 2:
                assert step >= seen[i][2], (step, seen[i][2], asked_at)
    assert len({s for seen in got for s, _, _ in seen}) > 10  # answered while training ran, not only at its end
    step, state = job.weights()
    assert step == steps - 1 and all(torch.all(v == float(steps - 1)) for v in state.values())

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
